"""From a generation to a program: pick the code out of the text, tidy Haskell into a module body.

Models answer in prose with fenced blocks, repeat the `module` header, add a `main` to try their code,
or put an `import` after a definition. None of that is what the problem asks for, and all of it would
fail to build with the test harness for reasons that have nothing to do with whether the function is
right, so it is removed here, by rules a reader can check (see the tests).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from sftpipe.evaluate.execution.problem import CodeProblem

FENCE = re.compile(r"```[ \t]*([\w+#.-]*)[^\n]*\n(.*?)(?:```|\Z)", re.S)
LANGUAGE_TAGS = {"haskell": {"haskell", "hs", "lhaskell", "ghc"}, "python": {"python", "py", "python3"}}
MODULE_HEADER = re.compile(r"^module\s+[A-Z][\w.']*\s*(\([^)]*(\([^)]*\)[^)]*)*\))?\s*where\b[ \t]*\n?", re.M | re.S)
# File-header pragmas (they must precede the `module` line); other pragmas stay where they are.
HEADER_PRAGMA = re.compile(r"^\{-#\s*(LANGUAGE|OPTIONS\w*)\b(.*?)#-\}[ \t]*\n?", re.M | re.S | re.I)
# Pragmas that make the compiler run code or programs at build time (Template Haskell, quasi-quotes, CPP
# includes, -F -pgmF preprocessors, plugins, annotations). Builds share a compiler process per batch, so
# these are refused instead of being run.
FORBIDDEN_EXTENSIONS = ("TemplateHaskell", "TemplateHaskellQuotes", "QuasiQuotes", "CPP", "StaticPointers")


def extract_code(text: str, language: str) -> str:
    """The code in a generation: fenced blocks tagged with the language (all of them, in order), else
    untagged blocks, else the first block, else the whole text. An unclosed fence runs to the end."""
    blocks = [(tag.lower(), body) for tag, body in FENCE.findall(text)]
    if not blocks:
        return text.strip("\n") + "\n"
    chosen = [b for t, b in blocks if t in LANGUAGE_TAGS[language]] or [b for t, b in blocks if not t] or [blocks[0][1]]
    return "\n".join(b.strip("\n") for b in chosen) + "\n"


def truncate_at_stops(text: str, stops: tuple[str, ...]) -> str:
    cut = min((text.find(s) for s in stops if s and s in text), default=-1)
    return text if cut < 0 else text[:cut]


def program_for(problem: CodeProblem, generation: str) -> str:
    """The solution source to build with `problem`'s tests.

    MultiPL-E problems: an answer that defines the entry point stands alone (Python keeps the prompt's
    imports); otherwise it continues the prompt (cut at the problem's stop tokens when unfenced).
    """
    code = extract_code(generation, problem.language)
    if problem.style != "multipl-e":
        return code
    entry = re.escape(problem.entry_point or "")
    if problem.language == "haskell":
        defines = bool(entry) and re.search(rf"^{entry}\b", code, re.M)
    else:
        defines = bool(entry) and re.search(rf"^def\s+{entry}\s*\(", code, re.M)
    if defines:
        if problem.language == "python":
            imports = [ln for ln in problem.prompt_code.splitlines() if re.match(r"(from\s+\S+\s+)?import\s", ln)]
            return "\n".join(imports + [code])
        return code
    if "```" not in generation:
        code = truncate_at_stops(generation, problem.stop_tokens)
    return problem.prompt_code + code


@dataclass
class HaskellSource:
    """A Haskell answer split into the parts a module needs in a fixed order."""

    pragmas: list[str]
    imports: list[str]
    body: str

    def module(self, name: str, exports: str = "") -> str:
        """The module text: pragmas, header, imports, declarations."""
        head = "".join(p.rstrip("\n") + "\n" for p in self.pragmas)
        imports = "".join(i.rstrip("\n") + "\n" for i in self.imports)
        return f"{head}module {name}{exports} where\n\n{imports}\n{self.body.strip(chr(10))}\n"


def split_haskell(code: str, drop_main: bool = True) -> HaskellSource:
    """Split Haskell code into pragmas, imports and the rest, dropping a `module` header and (by default)
    a `main` definition. Imports anywhere at column 0 are hoisted, with their indented continuation lines."""
    code = code.replace("\r\n", "\n").replace("\t", "    ")
    pragmas = [m.group(0) for m in HEADER_PRAGMA.finditer(code)]
    code = HEADER_PRAGMA.sub("", code)
    code = MODULE_HEADER.sub("", code, count=1)
    imports: list[str] = []
    body: list[str] = []
    lines = code.split("\n")
    i = 0
    while i < len(lines):
        line = lines[i]
        top_level = re.match(r"(import\s|main\s*(::|=)|main$)", line)
        if not top_level or (not drop_main and line.startswith("main")):
            body.append(line)
            i += 1
            continue
        block = [line]
        i += 1
        while i < len(lines) and (lines[i].startswith((" ", "\t")) or (not lines[i].strip() and _continues(lines, i))):
            block.append(lines[i])
            i += 1
        if line.startswith("import"):
            imports.append("\n".join(block))
    return HaskellSource(pragmas, imports, "\n".join(body))


def _continues(lines: list[str], i: int) -> bool:
    """A blank line inside a block: the next non-blank line is still indented."""
    for line in lines[i:]:
        if line.strip():
            return line.startswith((" ", "\t"))
    return False


def forbidden_haskell(source: HaskellSource) -> list[str]:
    """Reasons to refuse building the code: compile-time code execution or options we do not allow."""
    problems = []
    for pragma in source.pragmas:
        match = HEADER_PRAGMA.match(pragma)
        if match is None:
            continue
        if match.group(1).upper().startswith("OPTIONS"):
            problems.append(f"{pragma.strip()} (compiler options are fixed by the evaluator)")
            continue
        for ext in re.split(r"[\s,]+", match.group(2).strip()):
            if ext in FORBIDDEN_EXTENSIONS:
                problems.append(f"LANGUAGE {ext} (runs code at compile time)")
    if re.search(r"\{-#\s*ANN\b", source.body):
        problems.append("ANN pragma (runs code at compile time)")
    return problems


def single_file_haskell(*, answer: str, tests: str) -> str:
    """answer + tests as one Main module, assembled as MultiPL-E does: LANGUAGE pragmas and `import` lines
    hoisted (in order), `import Solution` and `module` lines dropped, nothing else touched.

    This is the program plain `runghc` judges: the `multipl-e` profile runs it, and the differential test
    compares the default runner's verdicts with it.
    """
    pragmas, imports, body = [], [], []
    for line in (answer + "\n" + tests).split("\n"):
        if line.startswith("{-# LANGUAGE"):
            pragmas.append(line)
        elif re.match(r"import\s+Solution\b", line) or re.match(r"module\s", line):
            continue
        elif line.startswith("import "):
            imports.append(line)
        else:
            body.append(line)
    return "\n".join([*pragmas, "module Main where", *imports, *body]) + "\n"


def normalise_code(code: str) -> str:
    """Whitespace-insensitive-at-line-ends form used for the execution cache key."""
    lines = [line.rstrip() for line in code.replace("\r\n", "\n").split("\n")]
    return "\n".join(lines).strip("\n")
