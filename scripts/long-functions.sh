#!/usr/bin/env bash
# Lists the product functions (C++ under model/ loader/ fallback_iptables/
# agent/ cni/ bench/, not tests) longer than N lines, longest first, as
# "file:line  length  name". A brace counter, not a parser: comments, strings
# and character literals are skipped, namespaces and class bodies are looked
# through, and a block whose opening brace follows a parameter list is a
# function (lambdas and blocks inside it count towards it). Length runs from
# the line where the signature starts to the closing brace. Always exits 0:
# a report for review, not a check.
#
#   scripts/long-functions.sh [N] [dir...]     N defaults to 80
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.." || exit 0

LIMIT=${1:-80}
case "$LIMIT" in '' | *[!0-9]*) echo "long-functions: N must be a number of lines" >&2; exit 0 ;; esac
shift $(($# > 0 ? 1 : 0))
DIRS=("$@")
if [ "${#DIRS[@]}" -eq 0 ]; then
  for d in model loader fallback_iptables agent cni bench; do [ -d "$d" ] && DIRS+=("$d"); done
fi

mapfile -t FILES < <(find "${DIRS[@]}" -type f \( -name '*.cpp' -o -name '*.cc' -o -name '*.h' -o -name '*.hpp' \) | sort)
[ "${#FILES[@]}" -eq 0 ] && exit 0

python3 - "$LIMIT" "${FILES[@]}" <<'PY' || true
import re
import sys

limit = int(sys.argv[1])

def blank_code(text):
    """Replaces comments, string and character literals by spaces (newlines kept)."""
    out = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if text.startswith("//", i):
            j = text.find("\n", i)
            j = n if j < 0 else j
            out.append(" " * (j - i)); i = j
        elif text.startswith("/*", i):
            j = text.find("*/", i + 2)
            j = n if j < 0 else j + 2
            out.append(re.sub(r"[^\n]", " ", text[i:j])); i = j
        elif c == "R" and text.startswith('R"', i) and not (i > 0 and (text[i-1].isalnum() or text[i-1] == "_")):
            m = re.match(r'R"([^(\s]*)\(', text[i:])
            if not m:
                out.append(c); i += 1; continue
            end = text.find(")" + m.group(1) + '"', i + m.end())
            j = n if end < 0 else end + len(m.group(1)) + 2
            out.append('""' + re.sub(r"[^\n]", " ", text[i+2:j])); i = j
        elif c in "\"'":
            if c == "'" and i > 0 and text[i-1].isalnum() and not text[i-1:i+1] in ("u'", "U'", "L'"):
                out.append(c); i += 1; continue  # digit separator 1'000
            j = i + 1
            while j < n and text[j] != c and text[j] != "\n":
                j += 2 if text[j] == "\\" else 1
            j = min(j + 1, n)
            out.append(c + " " * max(0, j - i - 2) + (c if j - i >= 2 else "")); i = j
        elif c == "#" and (i == 0 or text[i-1] == "\n" or text[:i].rsplit("\n", 1)[-1].strip() == ""):
            j = i
            while True:  # preprocessor line, with continuations
                k = text.find("\n", j)
                if k < 0: k = n; break
                if text[k-1] != "\\": break
                j = k + 1
            out.append(re.sub(r"[^\n]", " ", text[i:k])); i = k
        else:
            out.append(c); i += 1
    return "".join(out)

QUALIFIERS = r"(\s*(const|noexcept(\s*\([^()]*\))?|override|final|mutable|volatile|&&|&|try))*"
FUNCTION_END = re.compile(r"\)" + QUALIFIERS + r"(\s*->\s*[^{};=]+)?\s*$")
INIT_LIST = re.compile(r"\)" + QUALIFIERS + r"\s*:(?!:)")
ACCESS = re.compile(r"^(\s*(public|private|protected)\s*:(?!:))+")

def function_name(sig):
    m = INIT_LIST.search(sig)
    close = m.start() if m else sig.rfind(")")
    arrow = re.search(r"\)" + QUALIFIERS + r"\s*->", sig)
    if not m and arrow:
        close = arrow.start()
    depth = 0
    for k in range(close, -1, -1):
        if sig[k] == ")": depth += 1
        elif sig[k] == "(":
            depth -= 1
            if depth == 0:
                head = sig[:k].rstrip()
                name = re.search(r"((?:[\w~]+(?:<[^<>]*>)?::)*(?:operator\s*\S+|~?\w+))$", head)
                return re.sub(r"\s+", " ", name.group(1)) if name else "?"
    return "?"

def scan(path):
    text = open(path, encoding="utf-8", errors="replace").read()
    code = blank_code(text)
    line_of = [0] * (len(code) + 1)
    line = 1
    for idx, ch in enumerate(code):
        line_of[idx] = line
        if ch == "\n": line += 1
    stack = []          # (kind, start offset of signature, name)
    pending = 0         # where the text before the next "{" starts
    found = []
    for idx, ch in enumerate(code):
        if ch == ";" and (not stack or stack[-1][0] in ("ns", "class")):
            pending = idx + 1
        elif ch == "{":
            if stack and stack[-1][0] in ("function", "inner"):
                stack.append(("inner", 0, "")); continue
            sig = code[pending:idx]
            sig = ACCESS.sub("", sig)
            flat = " ".join(sig.split())
            if re.match(r"^(inline\s+)?namespace\b|^extern\s*\"?\s*\"?$|^extern\b", flat):
                stack.append(("ns", 0, ""))
            elif re.search(r"\b(class|struct|union|enum)\b[^()=]*$", flat):
                cls = re.search(r"\b(?:class|struct|union)\s+(?:\[\[[^]]*\]\]\s*)?(\w+(?:::\w+)*)", flat)
                stack.append(("class", 0, cls.group(1) if cls else ""))
            elif FUNCTION_END.search(flat) and "=" not in re.sub(r"operator\s*[^(\s]*|\([^()]*\)|<[^<>]*>", "", flat.split("(")[0]):
                start = pending + (len(sig) - len(sig.lstrip()))
                name = function_name(flat)
                outer = [n for kind, _, n in stack if kind == "class" and n]
                stack.append(("function", start, "::".join(outer + [name])))
            else:
                stack.append(("other", 0, ""))
            if stack[-1][0] != "other":
                pending = idx + 1
        elif ch == "}":
            if not stack:
                continue
            kind, start, name = stack.pop()
            if kind == "function":
                first, last = line_of[start], line_of[idx]
                found.append((last - first + 1, first, name))
            if kind in ("function", "ns", "class"):
                pending = idx + 1
    return found

rows = []
for path in sys.argv[2:]:
    for length, first, name in scan(path):
        if length > limit:
            rows.append((length, f"{path}:{first}", name))
rows.sort(key=lambda r: (-r[0], r[1]))
for length, where, name in rows:
    print(f"{where:<40} {length:>4}  {name}")
print(f"{len(rows)} function(s) longer than {limit} lines")
PY
exit 0
