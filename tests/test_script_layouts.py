"""Each Lua script reads its KEYS and ARGV where its layout (es_workers/redis/layouts.py,
through which the Python side builds them) puts them.

For every `<name>.lua`: its header declares the layout as layouts.py does; every KEYS[...] and
ARGV[...] its code reads resolves to a declared name (a literal position, `#KEYS - k` in the
tail, `A + B * i` in the repeated group with B its width, `A + B * count` past the last
item); a fixed name is read only into a local of that name (`local name = KEYS[n]`, or
`tonumber(ARGV[n])`...), so a name moved on one side only is found; a loop over the items
steps by the group's width from after the fixed names. (keyring.lua's arguments mean
something else per operation: `a_or_b` names are only counted.)
"""

from __future__ import annotations

import re
from dataclasses import replace
from importlib import resources

import pytest

from es_workers.redis.layouts import APPEND, LAYOUTS, Layout, Part

INDEX = re.compile(r"\b(KEYS|ARGV)\[([^\[\]]+)\]")
LOCAL = re.compile(r"^\s*local\s+([\w\s,]+?)\s*=\s*(.+)$")
BOUND = re.compile(r"^(?:tonumber\(|cjson\.decode\()?(KEYS|ARGV)\[([^\[\]]+)\](?:\)|\s*==\s*'')?$")
ITEMS_COUNTED = re.compile(r"\(#(KEYS|ARGV) - (\d+)\) / (\d+)")
ITEMS_LOOP = re.compile(r"for i = 0, #(KEYS|ARGV) - (\d+) do")


def source(script: str) -> str:
    return resources.files("es_workers.redis").joinpath(f"{script}.lua").read_text()


def code_lines(text: str) -> list[str]:
    """The script's code, comments and strings dropped, a statement continued after a
    trailing comma joined to its first line."""
    lines: list[str] = []
    for line in text.splitlines():
        line = re.sub(r"'[^']*'|\"[^\"]*\"", "''", line).split("--")[0].rstrip()
        if lines and lines[-1].endswith(","):
            lines[-1] += " " + line.strip()
        elif line:
            lines.append(line)
    return lines


def linear(expression: str, aliases: dict[str, str]) -> dict[str, int]:
    """`expression` (integers, names, +, -, *) as {symbol: coefficient}, "" the constant;
    local aliases substituted."""
    total: dict[str, int] = {}
    for sign, term in re.findall(r"([+-]?)\s*([^+-]+)", expression.replace(" ", "")):
        coefficient, symbols = -1 if sign == "-" else 1, {}
        for factor in term.split("*"):
            if factor.isdigit():
                coefficient *= int(factor)
            elif factor in aliases:
                symbols = linear(aliases[factor], aliases)
            else:
                symbols = {factor: 1}
        for symbol, value in (symbols or {"": 1}).items():
            total[symbol] = total.get(symbol, 0) + coefficient * value
    return {symbol: value for symbol, value in total.items() if value}


def resolve(part: Part, expression: str, aliases: dict[str, str], item_base: int) -> str:
    """The declared name at KEYS[expression] or ARGV[expression]; AssertionError if none."""
    form = linear(expression, aliases)
    constant, fixed, width = form.pop("", 0), len(part.fixed), len(part.each)
    if not form:  # a literal position
        index = constant - 1
        if index < fixed:
            return part.fixed[index]
        if width:
            return part.each[(index - fixed) % width]
        assert index - fixed < len(part.tail), f"[{constant}] is past {part.render()}"
        return part.tail[index - fixed]
    [(symbol, step)] = form.items()
    if symbol.startswith("#"):  # from the end: the tail
        assert step == 1 and constant <= 0 and -constant < len(part.tail), expression
        return part.tail[len(part.tail) - 1 + constant]
    assert width, f"[{expression}]: {part.render()} has no repeated group"
    assert step == width, f"[{expression}] steps by {step}, the group is {width} wide"
    if symbol == "i":  # item i counted from item_base
        offset = constant + step * item_base - fixed - 1
        assert 0 <= offset < width, f"[{expression}] is outside the group of item i"
        return part.each[offset]
    assert symbol == "count", f"[{expression}]: unknown variable {symbol!r}"
    offset = constant - fixed - 1 + width  # past `count` items: the last one's, or the tail
    if offset < width:
        assert offset >= 0, f"[{expression}] is before the last item"
        return part.each[offset]
    assert offset - width < len(part.tail), f"[{expression}] is past {part.render()}"
    return part.tail[offset - width]


def problems(layout: Layout, text: str) -> list[str]:
    """What in the script's text disagrees with the layout."""
    found: list[str] = []
    header = [line for line in text.splitlines() if line.startswith("-- layout ")]
    if header != layout.header():
        found.append(f"header {header} is not {layout.header()}")
    aliases: dict[str, str] = {}
    parts = {"KEYS": layout.keys, "ARGV": layout.args}
    for line in code_lines(text):
        try:
            binding = LOCAL.match(line)
            if binding:
                names = [name.strip() for name in binding.group(1).split(",")]
                values = [value.strip() for value in binding.group(2).split(",")]
                for name, value in zip(names, values, strict=False):
                    bound = BOUND.match(value)
                    if bound:
                        line = line.replace(value, "", 1)  # read into its local
                        at = resolve(parts[bound.group(1)], bound.group(2), aliases,
                                     layout.item_base)
                        assert at == name, f"local {name} = {value} reads {at!r}"
                    elif len(names) == 1 and re.fullmatch(r"[\w\s+*-]+", value):
                        aliases[name] = value  # e.g. local arg = 5 + 5 * i
            for which, expression in INDEX.findall(line):
                name = resolve(parts[which], expression, aliases, layout.item_base)
                if (expression.isdigit() and int(expression) <= len(parts[which].fixed)
                        and "_or_" not in name):
                    found.append(f"{line.strip()!r}: reads {which}[{expression}] ({name}) "
                                 f"without a local {name}")
            for which, before, step in ITEMS_COUNTED.findall(line) + [
                    (w, n, "1") for w, n in ITEMS_LOOP.findall(line)]:
                part = parts[which]
                skipped = len(part.fixed) + len(part.tail) + (step == "1" and "for" in line)
                assert (int(before), int(step)) == (skipped, len(part.each)), (
                    f"items counted as (#{which} - {before}) / {step}")
        except AssertionError as error:
            found.append(f"{line.strip()!r}: {error}")
    return found


@pytest.mark.parametrize("script", sorted(LAYOUTS))
def test_each_script_reads_its_arguments_where_its_layout_puts_them(script: str) -> None:
    assert problems(LAYOUTS[script], source(script)) == []


def test_every_lua_script_has_a_layout() -> None:
    scripts = {path.name.removesuffix(".lua")
               for path in resources.files("es_workers.redis").iterdir()
               if path.name.endswith(".lua")}
    assert scripts == set(LAYOUTS)


@pytest.mark.parametrize("changed", [
    replace(APPEND, args=replace(APPEND.args, fixed=("entity_id", "entity_type", "expected",
                                                      "count"))),
    replace(APPEND, args=replace(APPEND.args, each=("name", "data", "time", "metadata"))),
    replace(APPEND, keys=replace(APPEND.keys, fixed=APPEND.keys.fixed[:-1])),
], ids=["two names swapped", "a field less per event", "a key less"])
def test_a_layout_the_script_disagrees_with_is_found(changed: Layout) -> None:
    """The check can fail: the script against its layout changed on the Python side only
    (the header changed alike, so that only the code disagrees)."""
    text = source(changed.script)
    for old, new in zip(APPEND.header(), changed.header(), strict=True):
        text = text.replace(old, new)
    assert problems(changed, text) != []


def test_pack_puts_names_and_items_in_the_declared_order_and_refuses_others() -> None:
    args = APPEND.args.pack([("n", "d", 1, "e", "")], entity_type="t", entity_id="a",
                            expected=0, count=1, wake="w")
    assert args == ["t", "a", 0, 1, "n", "d", 1, "e", "", "w"]
    assert APPEND.keys.pack(**dict.fromkeys(APPEND.keys.fixed, "k"))[-1] == "k"
    with pytest.raises(ValueError, match=r"missing \['count'\]"):
        APPEND.args.pack(entity_type="t", entity_id="a", expected=0)
    with pytest.raises(ValueError, match=r"unknown \['county'\]"):
        APPEND.args.pack(entity_type="t", entity_id="a", expected=0, count=1, county=1)
    with pytest.raises(ValueError, match="an item holds"):
        APPEND.args.pack([("n", "d")], entity_type="t", entity_id="a", expected=0, count=1)
