"""The option reference: every key of every entry point, its default and its description.

``python -m nas.options`` writes ``docs/options.md``. The defaults and the descriptions are read from
the YAML files in ``conf/`` (a key's trailing comment, continued on the lines below it that start with
``#   ``, or a comment line just above it); the keys come from the schemas in :mod:`nas.config`, so a
key without a description is found (``tests/nas/test_options.py``) and nothing is written twice.
"""

from __future__ import annotations

import re
import sys
from dataclasses import fields, is_dataclass
from importlib import resources
from pathlib import Path

from nas.config import GROUP_SCHEMAS, SCHEMAS, VARIANTS

ENTRIES = {"search": "nas.search", "derive": "nas.derive", "retrain": "nas.retrain", "train": "nas.train",
           "evaluate": "nas.evaluate"}
_KEY = re.compile(r"^(?P<indent> *)(?P<key>[A-Za-z_]\w*):(?P<value>[^#]*?)\s*(?:#(?P<comment>.*))?$")
_COMMENT = re.compile(r"^(?P<indent> *)#(?P<comment>.*)$")


def yaml_options(text: str) -> dict[str, tuple[str, str]]:
    """``{dotted key: (default as written, description)}`` of one YAML file (``defaults`` and ``hydra`` skipped).

    A trailing comment starting with three spaces (``#   more``) continues the key above; a comment
    line above a key at its indentation describes it.
    """
    out: dict[str, list[str]] = {}
    stack: list[tuple[int, str]] = []
    last, pending, skip_indent = None, [], None
    for line in text.splitlines():
        if not line.strip():
            pending = []
            continue
        m, c = _KEY.match(line), _COMMENT.match(line)
        if c:
            text_ = c["comment"]
            if last is not None and len(c["indent"]) > last[1] and text_.startswith("  "):
                out[last[0]][1] += " " + text_.strip()
            elif last is not None:  # above a key (the comments before the first key head the file)
                pending.append(text_.strip())
            continue
        if not m:  # a list item (defaults) or a continued value
            continue
        indent = len(m["indent"])
        if skip_indent is not None and indent > skip_indent:
            continue
        skip_indent = None
        if indent == 0 and m["key"] in ("defaults", "hydra"):
            skip_indent, pending = 0, []
            continue
        while stack and stack[-1][0] >= indent:
            stack.pop()
        key = ".".join([k for _, k in stack] + [m["key"]])
        comment = (m["comment"] or "").strip()
        if (m["comment"] or "").startswith("   ") and last is not None:  # continues the key above
            out[last[0]][1] += " " + comment
            comment = ""
        out[key] = [m["value"].strip(), " ".join([*pending, comment]).strip()]
        last, pending = (key, indent), []
        if not m["value"].strip():
            stack.append((indent, m["key"]))
    return {k: (v, d) for k, (v, d) in out.items()}


def _conf_text(*parts: str) -> str:
    return (resources.files("conf").joinpath(*parts)).read_text()


EXTENDS = {"train": "retrain", "derive": "search"}  # an entry point whose config extends another's


def entry_options(entry: str) -> dict[str, tuple[str, str]]:
    """An entry point's own keys (one that extends another, :data:`EXTENDS`, overrides the other's)."""
    opts = yaml_options(_conf_text(f"{EXTENDS[entry]}.yaml")) if entry in EXTENDS else {}
    return {**opts, **yaml_options(_conf_text(f"{entry}.yaml"))}


def group_options(group: str) -> dict[str, dict[str, tuple[str, str]]]:
    """``{option name: its keys}`` of a config group (``conf/<group>/*.yaml``)."""
    folder = resources.files("conf") / group
    return {p.name[:-5]: yaml_options(p.read_text()) for p in sorted(folder.iterdir(), key=lambda p: p.name)
            if p.name.endswith(".yaml")}


def schema_keys(schema: type, prefix: str = "") -> list[str]:
    """Dotted keys of a schema, sections expanded, group nodes (device, dataset, ...) left out."""
    keys = []
    for f in fields(schema):
        tp = f.type if isinstance(f.type, type) else None
        if f.name in GROUP_SCHEMAS:
            continue
        section = f.default_factory if is_dataclass(getattr(f, "default_factory", None)) else tp
        if section is not None and is_dataclass(section):
            keys += schema_keys(section, f"{prefix}{f.name}.")
        else:
            keys.append(prefix + f.name)
    return keys


def group_keys(group: str) -> list[str]:
    """Every key a group's options may have: the base schema's and its variants'."""
    base = GROUP_SCHEMAS[group]
    schemas = [base, *VARIANTS.get(base, ("", {}))[1].values()]
    return list(dict.fromkeys(f.name for s in schemas for f in fields(s)))


def undocumented() -> list[str]:
    """``entry: key`` / ``group: key`` of every option without a description (the test wants none)."""
    missing = []
    for entry in ENTRIES:
        opts = entry_options(entry)
        missing += [f"{entry}: {k}" for k in schema_keys(SCHEMAS[entry]) if not opts.get(k, ("", ""))[1]]
    for group in GROUP_SCHEMAS:
        options = group_options(group)
        for key in group_keys(group):
            if not any(o.get(key, ("", ""))[1] for o in options.values()):
                missing.append(f"{group}: {key}")
    return missing


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def reference() -> str:
    """``docs/options.md``."""
    lines = ["# Options\n",
             "Every option of every command, with its default and what it does, generated from `conf/` by "
             "`python -m nas.options` (do not edit by hand). Set any of them on the command line as `key=value` "
             "(`train.lr=1e-3`); a group option picks a file (`device=cpu` is `conf/device/cpu.yaml`) whose keys "
             "are then `device.<key>=...`. Every value is checked before any work: a bad one ends in one "
             "`error:` line naming the key and its valid values.\n"]
    for entry, module in ENTRIES.items():
        opts = entry_options(entry)
        lines += [f"## `python -m {module}`\n", "| option | default | description |", "|---|---|---|"]
        lines += [f"| `{k}` | `{_cell(opts[k][0]) or '-'}` | {_cell(opts[k][1])} |"
                  for k in schema_keys(SCHEMAS[entry]) if k in opts]
        lines.append("")
    for group in GROUP_SCHEMAS:
        options = group_options(group)
        lines += [f"## Group `{group}=` ({', '.join(options)})\n",
                  "| key | " + " | ".join(options) + " | description |", "|---|" + "---|" * (len(options) + 1)]
        for key in group_keys(group):
            desc = next((o[key][1] for o in options.values() if key in o and o[key][1]), "")
            vals = " | ".join(f"`{_cell(o[key][0])}`" if key in o else "" for o in options.values())
            lines.append(f"| `{key}` | {vals} | {_cell(desc)} |")
        lines.append("")
    return "\n".join(lines)


def entry_groups(entry: str) -> list[str]:
    """The config groups an entry point composes (its YAML ``defaults`` list, and the one it extends)."""
    text = _conf_text(f"{entry}.yaml")
    groups = entry_groups(EXTENDS[entry]) if entry in EXTENDS else []
    groups += re.findall(r"^ +- (?!override )(\w+):", text.split("\n\n", 1)[0] if "defaults:" in text else "",
                         flags=re.M)
    return [g for g in dict.fromkeys(groups) if g in GROUP_SCHEMAS]


def help_text(entry: str) -> str:
    """``--help`` of an entry point: usage, the groups it composes with their options, and every option with
    its default and description (the YAML comments, as in ``docs/options.md``)."""
    header = [ln[2:] for ln in _conf_text(f"{entry}.yaml").splitlines() if ln.startswith("# ")]
    opts = entry_options(entry)
    lines = [*header, "", "Set options as key=value; every value is checked before any work. Groups (group=option,",
             "then group.key=value):"]
    lines += [f"  {g}: {', '.join(group_options(g))}" for g in entry_groups(entry)]
    lines += ["", "Options (default: description):"]
    lines += [f"  {k}={opts[k][0] or '-'}: {opts[k][1]}" for k in schema_keys(SCHEMAS[entry]) if k in opts]
    lines += ["", "Every option and every group's keys: docs/options.md. Hydra's own flags: --hydra-help."]
    return "\n".join(lines)


def show_help_if_asked(entry: str, argv: list[str] | None = None) -> None:
    """Print :func:`help_text` and exit 0 when the command line asks for ``--help`` (or ``-h``)."""
    if {"--help", "-h"} & set(sys.argv[1:] if argv is None else argv):
        print(help_text(entry))
        raise SystemExit(0)


def main() -> None:
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else Path("docs/options.md")
    from search_spaces.io import atomic_write_text
    atomic_write_text(out, reference())
    print(f"{out}: {len(undocumented())} options without a description")


if __name__ == "__main__":
    main()
