"""Renders the Sluice Helm chart without helm: Helm is not packaged by Debian,
PyPI or npm, so this implements the part of Go templates and Helm's functions
that deploy/helm/sluice uses (actions with whitespace trimming, comments,
define/include, if/else/with/range, pipelines, and the functions below). It
fails loudly on anything else, so a template using more needs this extended,
never silently rendered wrong. Where helm is installed, test_deploy.py uses
`helm template` instead.

    python tests/deploy/helm_render.py deploy/helm/sluice [-f values.yaml ...]
"""

import hashlib
import re
import sys
from pathlib import Path

import yaml

ACTION = re.compile(r"\{\{(-?)\s*(.*?)\s*(-?)\}\}", re.S)


class TemplateError(Exception):
    pass


def tokenize(text):
    """Text and action tokens, with `{{-`/`-}}` trimming applied."""
    out, pos = [], 0
    for m in ACTION.finditer(text):
        out.append(["text", text[pos:m.start()]])
        if m.group(1) and out[-1][0] == "text":
            out[-1][1] = out[-1][1].rstrip()
        out.append(["action", m.group(2), bool(m.group(3))])
        pos = m.end()
    out.append(["text", text[pos:]])
    for i, t in enumerate(out):
        if t[0] == "action" and t[2] and i + 1 < len(out):
            out[i + 1][1] = out[i + 1][1].lstrip()
    return [t for t in out if not (t[0] == "action" and t[1].startswith("/*"))]


def parse(tokens, i=0, stop=("end",)):
    """A list of nodes up to a stop keyword; returns (nodes, index, keyword)."""
    nodes = []
    while i < len(tokens):
        t = tokens[i]
        if t[0] == "text":
            nodes.append(("text", t[1]))
            i += 1
            continue
        src = t[1]
        word = src.split(None, 1)[0] if src else ""
        if word in stop:
            return nodes, i + 1, word
        if word in ("if", "with", "range"):
            body, i, kw = parse(tokens, i + 1, ("end", "else"))
            alt = []
            if kw == "else":
                alt, i, _ = parse(tokens, i, ("end",))
            nodes.append((word, src[len(word):].strip(), body, alt))
        elif word == "define":
            body, i, _ = parse(tokens, i + 1, ("end",))
            nodes.append(("define", lex(src[len(word):])[0][1], body))
        elif word in ("end", "else"):
            raise TemplateError(f"unexpected {word}")
        else:
            nodes.append(("expr", src))
            i += 1
    if "end" in stop and stop != ("__eof__",):
        raise TemplateError("missing {{ end }}")
    return nodes, i, None


TOKEN = re.compile(r'\s*(?:("(?:[^"\\]|\\.)*")|(\()|(\))|(\|)|(-?\d+)|(\$?\.?[A-Za-z_][\w.]*|\.|\$))')


def lex(src):
    out, pos = [], 0
    while pos < len(src):
        if src[pos:].strip() == "":
            break
        m = TOKEN.match(src, pos)
        if not m:
            raise TemplateError(f"cannot read {src[pos:]!r}")
        s, lp, rp, bar, num, word = m.groups()
        if s is not None:
            out.append(("str", bytes(s[1:-1], "utf-8").decode("unicode_escape")))
        elif lp:
            out.append(("(", None))
        elif rp:
            out.append((")", None))
        elif bar:
            out.append(("|", None))
        elif num is not None:
            out.append(("num", int(num)))
        else:
            out.append(("word", word))
        pos = m.end()
    return out


def to_yaml(v):
    if v in ({}, [], None):
        return "" if v is None else yaml.safe_dump(v, default_flow_style=True).strip()
    return yaml.safe_dump(v, default_flow_style=False, sort_keys=True).rstrip("\n")


def truthy(v):
    return bool(v) if not isinstance(v, (int, float)) or isinstance(v, bool) else v != 0


FUNCS = {
    "nindent": lambda n, s: "\n" + "\n".join((" " * n + line) if line else line for line in str(s).split("\n")),
    "indent": lambda n, s: "\n".join((" " * n + line) if line else line for line in str(s).split("\n")),
    "toYaml": to_yaml,
    "quote": lambda *a: " ".join('"' + str(x).replace("\\", "\\\\").replace('"', '\\"') + '"' for x in a),
    "trunc": lambda n, s: str(s)[:n],
    "trimSuffix": lambda suf, s: str(s)[: -len(suf)] if suf and str(s).endswith(suf) else str(s),
    "default": lambda d, v=None: v if truthy(v) else d,
    "printf": lambda fmt, *a: re.sub(r"%[sdv]", "{}", fmt).format(*a),
    "contains": lambda sub, s: sub in str(s),
    "sha256sum": lambda s: hashlib.sha256(str(s).encode()).hexdigest(),
    "add": lambda *a: sum(int(x) for x in a),
    "div": lambda a, b: int(a) // int(b),
    "not": lambda v: not truthy(v),
    "or": lambda *a: next((x for x in a if truthy(x)), a[-1]),
}


class Renderer:
    def __init__(self, chart_dir, values):
        self.chart = yaml.safe_load((chart_dir / "Chart.yaml").read_text())
        self.root = {
            "Values": values,
            "Chart": {"Name": self.chart["name"], "Version": self.chart["version"],
                      "AppVersion": self.chart.get("appVersion", "")},
            "Release": {"Name": "sluice", "Namespace": "default", "Service": "Helm"},
        }
        self.defines = {}
        self.files = {}
        for p in sorted((chart_dir / "templates").iterdir()):
            if p.suffix not in (".yaml", ".tpl"):
                continue
            nodes, _, _ = parse(tokenize(p.read_text()), stop=("__eof__",))
            self.files[p.name] = [n for n in nodes if self._collect(n)]

    def _collect(self, n):
        if n[0] == "define":
            self.defines[n[1]] = n[2]
            return False
        return True

    def lookup(self, word, dot):
        if word == ".":
            return dot
        if word == "$":
            return self.root
        base, path = (self.root, word[2:]) if word.startswith("$.") else (dot, word[1:])
        v = base
        for part in path.split("."):
            if isinstance(v, dict):
                if part not in v:
                    raise TemplateError(f"{word}: no {part!r}")
                v = v[part]
            else:
                raise TemplateError(f"{word}: {part!r} of a {type(v).__name__}")
        return v

    def pipeline(self, toks, dot):
        cmds, cur, depth = [], [], 0
        for t in toks:
            if t[0] == "|" and depth == 0:
                cmds.append(cur)
                cur = []
                continue
            depth += t[0] == "("
            depth -= t[0] == ")"
            cur.append(t)
        cmds.append(cur)
        val, first = None, True
        for c in cmds:
            val = self.command(c, dot, None if first else (val,))
            first = False
        return val

    def args(self, toks, dot):
        out, i = [], 0
        while i < len(toks):
            kind, v = toks[i]
            if kind == "(":
                depth, j = 1, i + 1
                while depth:
                    depth += toks[j][0] == "("
                    depth -= toks[j][0] == ")"
                    j += 1
                out.append(self.pipeline(toks[i + 1:j - 1], dot))
                i = j
                continue
            if kind in ("str", "num"):
                out.append(v)
            elif kind == "word" and (v.startswith(".") or v.startswith("$")):
                out.append(self.lookup(v, dot))
            else:
                raise TemplateError(f"unexpected {v!r}")
            i += 1
        return out

    def command(self, toks, dot, piped):
        if not toks:
            raise TemplateError("empty command")
        kind, v = toks[0]
        if kind == "word" and not v.startswith((".", "$")):
            args = self.args(toks[1:], dot) + list(piped or ())
            if v == "include":
                return self.render(self.defines[args[0]], args[1]).strip("\n") if len(args) > 1 else ""
            if v not in FUNCS:
                raise TemplateError(f"function {v!r} is not implemented")
            return FUNCS[v](*args)
        vals = self.args(toks, dot)
        if len(vals) != 1 or piped:
            raise TemplateError(f"cannot apply {toks!r}")
        return vals[0]

    def render(self, nodes, dot):
        out = []
        for n in nodes:
            kind = n[0]
            if kind == "text":
                out.append(n[1])
            elif kind == "expr":
                v = self.pipeline(lex(n[1]), dot)
                out.append("" if v is None else (str(v).lower() if isinstance(v, bool) else str(v)))
            elif kind in ("if", "with"):
                v = self.pipeline(lex(n[1]), dot)
                if truthy(v):
                    out.append(self.render(n[2], v if kind == "with" else dot))
                else:
                    out.append(self.render(n[3], dot))
            elif kind == "range":
                v = self.pipeline(lex(n[1]), dot)
                items = list(v.values()) if isinstance(v, dict) else list(v or [])
                out.extend(self.render(n[2], item) for item in items)
                if not items:
                    out.append(self.render(n[3], dot))
        return "".join(out)

    def manifests(self):
        """Every rendered object, as (template file, object)."""
        objs = []
        for name, nodes in self.files.items():
            if name.endswith(".tpl"):
                continue
            text = self.render(nodes, self.root)
            for doc in yaml.safe_load_all(text):
                if doc:
                    objs.append((name, doc))
        return objs


def merge(base, over):
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(base.get(k), dict):
            merge(base[k], v)
        else:
            base[k] = v
    return base


def render_chart(chart_dir, value_files=()):
    chart_dir = Path(chart_dir)
    values = yaml.safe_load((chart_dir / "values.yaml").read_text())
    for f in value_files:
        merge(values, yaml.safe_load(Path(f).read_text()) or {})
    return values, Renderer(chart_dir, values).manifests()


PLAIN_HEADER = """\
# Plain manifests for those without Helm: deploy/helm/sluice rendered with its
# default values by tests/deploy/helm_render.py --plain. Do not edit: change the
# chart and regenerate (SLUICE_BLESS=1 pytest tests/e2e/test_deploy.py). Adjust
# with kustomize (deploy/kubernetes/kustomization.yaml): images, replicas,
# the ConfigMap's sluice.toml.
"""


class _Dumper(yaml.SafeDumper):
    pass


_Dumper.add_representer(
    str,
    lambda d, s: d.represent_scalar("tag:yaml.org,2002:str", s, style="|" if "\n" in s else None),
)


def plain(objs):
    """The chart's objects without Helm's own labels."""
    out = []
    for _, o in objs:
        for meta in (o["metadata"], o.get("spec", {}).get("template", {}).get("metadata", {})):
            for k in ("helm.sh/chart", "app.kubernetes.io/managed-by"):
                meta.get("labels", {}).pop(k, None)
        out.append(o)
    return PLAIN_HEADER + "".join("---\n" + yaml.dump(o, Dumper=_Dumper, sort_keys=False) for o in out)


if __name__ == "__main__":
    args = sys.argv[1:]
    files = [args[i + 1] for i, a in enumerate(args) if a == "-f"]
    chart = [a for i, a in enumerate(args) if not a.startswith("-") and (i == 0 or args[i - 1] != "-f")][0]
    _, objs = render_chart(chart, files)
    if "--plain" in args:
        sys.stdout.write(plain(objs))
    else:
        print("\n---\n".join(f"# Source: {name}\n" + yaml.safe_dump(o, sort_keys=False) for name, o in objs))
