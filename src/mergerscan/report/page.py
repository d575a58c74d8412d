"""The HTML shell shared by the run and training reports: one file, no external resources."""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Set as AbstractSet

CSS = """
:root { --ink:#1d232a; --mute:#5b6670; --line:#d9dee3; --accent:#1f5fa8; --bg:#f6f7f9; }
* { box-sizing: border-box; }
body { margin:0; font:15px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,"DejaVu Sans",sans-serif;
       color:var(--ink); background:var(--bg); }
header { background:#0f1b2d; color:#e8edf3; padding:22px 32px 16px; }
header h1 { margin:0 0 4px; font-size:24px; font-weight:600; }
header .sub { color:#a9b8c8; font-size:13px; word-break:break-all; }
nav { position:sticky; top:0; z-index:2; background:#17273d; padding:6px 32px; font-size:13px; }
nav a { color:#cfe0f5; margin-right:16px; text-decoration:none; } nav a:hover { text-decoration:underline; }
main { max-width:1240px; margin:0 auto; padding:8px 32px 48px; }
section { background:#fff; border:1px solid var(--line); border-radius:8px; margin:18px 0; padding:14px 22px 18px; }
h2 { font-size:19px; margin:4px 0 8px; } h3 { font-size:15px; margin:14px 0 6px; }
p.note, .note { color:var(--mute); font-size:13px; margin:6px 0; }
figure { margin:8px 0; } figure img { max-width:100%; height:auto; display:block; }
figcaption { color:var(--mute); font-size:13px; margin-top:4px; }
table { border-collapse:collapse; font-size:13.5px; margin:6px 0; }
th, td { border-bottom:1px solid var(--line); padding:4px 10px; text-align:left; vertical-align:top; }
th { background:#eef1f4; font-weight:600; } td.num { text-align:right; font-variant-numeric:tabular-nums; }
code, .mono { font-family:ui-monospace,"DejaVu Sans Mono",Menlo,Consolas,monospace; font-size:12.5px; }
.cards { display:flex; flex-wrap:wrap; gap:12px; margin:14px 0 0; }
.card { background:#fff; border:1px solid var(--line); border-radius:8px; padding:10px 16px; min-width:150px; }
.card .v { font-size:22px; font-weight:600; } .card .k { color:var(--mute); font-size:12px; }
.warn { background:#fff4e0; border:1px solid #f0c36d; border-radius:6px; padding:8px 12px; margin:8px 0; }
.gallery { display:grid; grid-template-columns:repeat(auto-fill,minmax(196px,1fr)); gap:12px;
           background:#0b0d12; padding:12px; border-radius:8px; }
.stamp { color:#dfe6ee; font-size:12px; line-height:1.35; }
.stamp img { width:100%; border-radius:4px; border:2px solid #333a44; image-rendering:auto; }
.stamp.merger img { border-color:#e8a33d; }
.stamp .p { font-size:14px; font-weight:600; color:#fff; } .stamp a { color:#8ec1ff; }
.stamp .id { font-family:ui-monospace,"DejaVu Sans Mono",monospace; font-size:11.5px; word-break:break-all; }
.two { display:grid; grid-template-columns:1fr 1fr; gap:18px; } @media (max-width:900px) { .two { grid-template-columns:1fr; } }
"""

# Lets a headless browser (the tests) read whether every image decoded and whether anything failed.
CHECK_JS = """
(function () {
  var errs = [];
  function put() { if (document.body) document.body.dataset.errors = errs.join(' | '); }
  window.addEventListener('error', function (e) {
    var t = e.target; errs.push(t && t.tagName ? t.tagName + ' failed: ' + (t.src || t.href) : String(e.message)); put();
  }, true);
  window.addEventListener('load', function () {
    var bad = [].filter.call(document.images, function (i) { return !(i.complete && i.naturalWidth > 0); });
    document.body.dataset.images = String(document.images.length);
    document.body.dataset.imagesOk = bad.length ? 'no' : 'yes';
    put();
  });
})();
"""

esc = html.escape


def data_uri(data: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"


def pyplot():
    """matplotlib.pyplot, off-screen (Agg), in the reports' style."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update({"font.size": 10, "axes.titlesize": 11, "axes.spines.top": False, "axes.spines.right": False})
    return plt


def fig_png(fig, dpi: int = 110) -> bytes:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight", facecolor="white")
    plt.close(fig)
    return buf.getvalue()


def figure(png: bytes | None, alt: str, caption: str = "") -> str:
    """An embedded PNG; a note where the figure could not be drawn (:func:`drawn`)."""
    if png is None:
        return f'<p class="note">The {esc(alt)} figure could not be drawn (see the note at the top).</p>'
    cap = f"<figcaption>{caption}</figcaption>" if caption else ""
    return f'<figure><img src="{data_uri(png)}" alt="{esc(alt)}">{cap}</figure>'


def drawn(notes: list[str], name: str, draw, *args, default=None):
    """``draw(*args)``, the one guard of every figure of a report: a figure that cannot be drawn
    (odd data, a plotting library's refusal) is skipped with a note in ``notes`` for the page,
    never the end of the report; ``default`` stands in for its result."""
    try:
        return draw(*args)
    except Exception as exc:
        import sys

        if "matplotlib.pyplot" in sys.modules:  # the half-drawn figure
            sys.modules["matplotlib.pyplot"].close("all")
        msg = " ".join(f"{type(exc).__name__}: {exc}".split())[:300]
        notes.append(f"the {name} figure could not be drawn and is left out ({msg})")
        return default


def table(header: list[str] | None, rows: list[list], num: AbstractSet[int] = frozenset()) -> str:
    """Simple table; cells are escaped unless wrapped in ``Raw``; columns in ``num`` right-aligned."""

    def cell(i, v):
        v = v.html if isinstance(v, Raw) else esc(str(v))
        return f'<td class="num">{v}</td>' if i in num else f"<td>{v}</td>"

    head = "<thead><tr>" + "".join(f"<th>{esc(h)}</th>" for h in header) + "</tr></thead>" if header else ""
    body = "".join("<tr>" + "".join(cell(i, v) for i, v in enumerate(r)) + "</tr>" for r in rows)
    return f"<table>{head}<tbody>{body}</tbody></table>"


class Raw:
    def __init__(self, html_text: str):
        self.html = html_text


def fmt(v, digits: int = 3) -> str:
    if isinstance(v, bool) or v is None:
        return str(v)
    if isinstance(v, int):
        return f"{v:,}"
    if isinstance(v, float):
        return f"{v:.{digits}f}" if 1e-3 <= abs(v) < 1e6 or v == 0 else f"{v:.{digits}g}"
    return str(v)


def page(title: str, subtitle: str, cards: list[tuple[str, str]], nav: list[tuple[str, str]], body: str) -> str:
    cards_html = "".join(
        f'<div class="card"><div class="v">{esc(v)}</div><div class="k">{esc(k)}</div></div>' for k, v in cards
    )
    nav_html = "".join(f'<a href="#{a}">{esc(t)}</a>' for a, t in nav)
    return (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f'<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{esc(title)}</title><style>{CSS}</style><script>{CHECK_JS}</script></head>\n"
        f'<body><header><h1>{esc(title)}</h1><div class="sub">{subtitle}</div></header>'
        f'<nav>{nav_html}</nav><main><div class="cards">{cards_html}</div>\n{body}\n</main></body></html>\n'
    )
