"""``prodsearch eval ... --report OUT_DIR``: one static page that shows where the search goes wrong.

``OUT_DIR/index.html`` opens from disk (``file://``): no server, no network, no JavaScript, the CSS
inline. Beside it ``img/`` holds small JPEG thumbnails of the photos shown and the PNG figures; the
page names them by relative paths, so the folder can be zipped or moved. Whatever the number of
queries, at most ``max_galleries`` query galleries are shown, so the folder stays a few MB. The
folder must be new, empty or an earlier report (:mod:`.report_folder`); the images an earlier
report left in ``img/`` are deleted.
"""

from __future__ import annotations

import html
import logging
import math
import os
from collections import Counter, defaultdict
from pathlib import Path
from typing import TYPE_CHECKING

from PIL import Image, ImageDraw

from prodsearch.catalog.files import write_atomically
from prodsearch.eval import report_plots
from prodsearch.eval.open_set import FARS
from prodsearch.eval.report_folder import GENERATOR, IMAGE_FILE, IMAGES, PAGE, check_report_dir, report_error
from prodsearch.retrieval.images import ImageLoadError, load_image

if TYPE_CHECKING:
    from prodsearch.eval.evaluate import EvalReport, OpenSetReport, QueryOutcome
    from prodsearch.indexer.results import Match

log = logging.getLogger(__name__)

THUMB_SIDE = 160  # px, the long side of a thumbnail
JPEG_QUALITY = 80
PLACEHOLDER = "unreadable.jpg"  # shown for every photo that cannot be read
MAX_CATEGORIES = 40  # bars in the per-category chart
MAX_CONFUSIONS = 12
EXAMPLES_PER_CONFUSION = 3
KINDS = {"wrong": "wrong answer", "false-accept": "not in the catalog, but accepted",
         "false-reject": "right answer, but rejected"}

STYLE = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:#1f2328;margin:0 auto;
 max-width:1180px;padding:0 16px 48px}
h1{font-size:24px;margin:20px 0 4px}h2{font-size:19px;margin:32px 0 8px;border-bottom:1px solid #d0d7de}
nav a{margin-right:14px}.row{display:flex;flex-wrap:wrap;gap:12px 40px;align-items:flex-start}.muted{color:#656d76}
.cards{display:flex;flex-wrap:wrap;gap:10px}
.card{border:1px solid #d0d7de;border-radius:8px;padding:8px 14px;min-width:110px}
.card .value{display:block;font-size:24px;font-weight:600}.card .label,.card .note{color:#656d76;font-size:12px}
table{border-collapse:collapse;margin:8px 0}td,th{border-bottom:1px solid #d0d7de;padding:4px 10px;text-align:left;
 vertical-align:top}th{background:#f6f8fa}td.num{text-align:right;font-variant-numeric:tabular-nums}
tr.applied td{font-weight:600}
img.thumb{max-width:160px;max-height:160px;width:auto;height:auto;display:block;background:#f6f8fa}
img.small{max-width:96px;max-height:96px}img.chart{max-width:100%;height:auto;min-width:0}.row img.chart{max-width:calc(50% - 20px)}
.sku{font-family:ui-monospace,SFMono-Regular,Menlo,monospace;font-size:12px;overflow-wrap:anywhere}
.examples{display:flex;gap:6px}
.gallery{display:flex;gap:14px;align-items:flex-start;border:1px solid #d0d7de;border-radius:8px;padding:10px;
 margin:10px 0;overflow-x:auto}
.gallery.false-accept{background:#fbefff}.gallery.false-reject{background:#fff8c5}
.query{margin:0;flex:0 0 170px}.query figcaption{font-size:12px;margin-top:4px}
.kind{font-weight:600;font-size:12px;text-transform:uppercase;color:#656d76}
ol.matches{display:flex;gap:10px;list-style:none;margin:0;padding:0}
.match{width:166px;font-size:12px}.match img{border:3px solid #cf222e;border-radius:4px}
.match.right img{border-color:#1a7f37}.match .score{float:right;font-variant-numeric:tabular-nums}
.name{color:#656d76}
@media(max-width:800px){.row img.chart{max-width:100%}}
"""


def write_report(report: EvalReport, out_dir: str | os.PathLike, *, max_galleries: int = 100,
                 title: str | None = None) -> Path:
    """Write ``out_dir/index.html`` and its ``img/`` folder, so a person can see which photos fail
    and why (the numbers alone do not say); return the page's path. A folder that is not new, empty
    or an earlier report is refused (:class:`~prodsearch.eval.report_folder.ReportDirError`)."""
    out = Path(out_dir)
    check_report_dir(out)
    try:
        return _write(report, out, max_galleries, title)
    except OSError as exc:
        raise report_error(out, exc) from None


def _write(report: EvalReport, out: Path, max_galleries: int, title: str | None) -> Path:
    images = _Images(out / IMAGES)
    rule = (report.open_set.rule if report.open_set else None) or "score"
    title = title or f"Evaluation of {report.n} query photos"
    sections = [("headline", "Headline", _headline(report)),
                ("categories", "Accuracy per category", _categories(report, images)),
                ("confusions", "Most frequent confusions", _confusions(report, images)),
                ("worst", "Worst queries", _worst(report, images, max(0, max_galleries))),
                ("scores", "Scores and rejection", _scores(report, images, rule))]
    nav = "".join(f'<a href="#{key}">{heading}</a>' for key, heading, _ in sections)
    body = "".join(f'<section id="{key}"><h2>{heading}</h2>{content}</section>' for key, heading, content in sections)
    page = (f'<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">{GENERATOR}<title>{_e(title)}</title>'
            f"<style>{STYLE}</style></head>\n<body><h1>{_e(title)}</h1><nav>{nav}</nav>\n{body}\n</body></html>\n")
    path = out / PAGE
    write_atomically(path, page.encode("utf-8"))
    images.remove_stale()
    log.info("wrote the evaluation report %s (%d files in %s/)", path, len(images.written), IMAGES)
    return path


class _Images:
    """The files of ``img/`` this run writes, each once; the rest of the folder is stale."""

    def __init__(self, folder: Path):
        folder.mkdir(parents=True, exist_ok=True)
        self.folder = folder
        self.written: set[str] = set()
        self.made: dict[str, tuple[str, tuple[int, int], str | None]] = {}  # name -> file, size, error

    def thumb(self, name: str, source: str | None, alt: str, small: bool = False) -> str:
        """An ``<img>`` of ``source`` shrunk into ``img/name``; the placeholder if it cannot be read."""
        if name not in self.made:
            self.made[name] = self._make(name, source)
        file, (width, height), error = self.made[name]
        tip = f"could not read {source}: {error}" if error else str(source)
        return (f'<img class="thumb{" small" if small else ""}{" missing" if error else ""}" '
                f'src="{IMAGES}/{_e(file)}" width="{width}" height="{height}" alt="{_e(alt)}" title="{_e(tip)}">')

    def _make(self, name: str, source: str | None) -> tuple[str, tuple[int, int], str | None]:
        try:
            if not source:
                raise ImageLoadError("no photo")
            img = load_image(source, min_side=THUMB_SIDE)
        except (ImageLoadError, OSError, ValueError, TypeError) as exc:
            log.warning("report: cannot read %s (%s); a placeholder stands in for it", source, exc)
            return self._placeholder(), (THUMB_SIDE, THUMB_SIDE), str(exc)
        img.thumbnail((THUMB_SIDE, THUMB_SIDE), Image.Resampling.LANCZOS)
        img.save(self.folder / name, "JPEG", quality=JPEG_QUALITY, optimize=True)
        self.written.add(name)
        return name, img.size, None

    def _placeholder(self) -> str:
        if PLACEHOLDER not in self.written:
            img = Image.new("RGB", (THUMB_SIDE, THUMB_SIDE), (208, 208, 208))
            draw = ImageDraw.Draw(img)
            draw.line([(40, 40), (120, 120)], fill=(150, 150, 150), width=6)
            draw.line([(40, 120), (120, 40)], fill=(150, 150, 150), width=6)
            img.save(self.folder / PLACEHOLDER, "JPEG", quality=JPEG_QUALITY)
            self.written.add(PLACEHOLDER)
        return PLACEHOLDER

    def plot(self, name: str) -> Path:
        """Where a figure goes (it counts as written)."""
        self.written.add(name)
        return self.folder / name

    def remove_stale(self) -> None:
        """Delete the images an earlier report left that this one does not show (only names a
        report writes: the folder was checked to hold nothing else)."""
        for path in self.folder.iterdir():
            if path.name not in self.written and IMAGE_FILE.match(path.name) and (path.is_file() or path.is_symlink()):
                path.unlink()


def _headline(report: EvalReport) -> str:
    cards = [("query photos", str(report.n), "", ""), ("top-1", _pct(report.top1), "", "top1"),
             ("top-5", _pct(report.top5), "", "top5")]
    cards += [(f"category level {lv.level}", _pct(lv.top1), f"{lv.n} photos", "") for lv in report.levels]
    if report.products:
        p = report.products
        cards += [("products top-1", _pct(p.top1), f"{p.n} products, {p.photos} photos", ""),
                  ("products top-5", _pct(p.top5), "", "")]
    if report.skipped:
        cards.append(("photos skipped", str(len(report.skipped)), "unreadable", ""))
    if report.unknown_sku:
        cards.append(("SKU not in the index", str(report.unknown_sku), "count as misses", ""))
    out = '<div class="cards">' + "".join(_card(*card) for card in cards) + "</div>"
    return out + (_open_set(report.open_set) if report.open_set else "")


def _open_set(s: OpenSetReport) -> str:
    """The applied rule at its threshold and threshold-free, then every rule threshold-free."""
    rule = f"{_e(s.rule)} &ge; {s.threshold:.4g}" if s.rule is not None else "none (the metrics are those of score)"
    rows = [("rule", rule), ("known photos", s.known), ("unknown photos (not in the catalog)", s.unknown)]
    if s.at_threshold:
        a = s.at_threshold
        rows += [("known accuracy (accepted and right)", _pct(a.known_accuracy)),
                 ("known photos rejected", _pct(a.known_rejected)), ("false-accept rate", _pct(a.false_accept_rate))]
    if s.scores:
        rows += [("AUROC", _num(s.scores.auroc))]
        rows += [(f"DIR@FAR {f:.0%}", _pct(s.scores.dir_at_far.get(str(f)))) for f in FARS]
        rows += [("OpenAUC", _num(s.scores.open_auc))]
    out = "".join(f"<tr><th>{k}</th><td>{v}</td></tr>" for k, v in rows)
    out = f'<h3>Products not in the catalog</h3><div class="row"><table>{out}</table>'
    if not s.by_rule:
        return out + "</div>"
    head = "".join(f"<th>{h}</th>" for h in ["rule", "AUROC", *(f"DIR@FAR {f:.0%}" for f in FARS), "OpenAUC"])
    applied = s.rule or "score"
    body = "".join(
        f'<tr{" class=applied" if r == applied else ""}><td>{_e(r)}</td><td class="num">{_num(v.auroc)}</td>'
        + "".join(f'<td class="num">{_pct(v.dir_at_far.get(str(f)))}</td>' for f in FARS)
        + f'<td class="num">{_num(v.open_auc)}</td></tr>' for r, v in s.by_rule.items())
    return (out + f'<div><p class="muted">Every rule on the same photos, threshold-free:</p>'
            f"<table><tr>{head}</tr>{body}</table></div></div>")


def _card(label: str, value: str, note: str, key: str) -> str:
    key = f' id="{key}"' if key else ""
    return (f'<div class="card"><span class="label">{label}</span><span class="value"{key}>{value}</span>'
            f'<span class="note">{_e(note)}</span></div>')


def _categories(report: EvalReport, images: _Images) -> str:
    shown = report.categories[:MAX_CATEGORIES]
    if not shown:
        return '<p class="muted">No query photo has a category.</p>'
    report_plots.category_chart(shown, images.plot("categories.png"))
    left = len(report.categories) - len(shown)
    note = f'<p class="muted">{left} better categories are not shown.</p>' if left else ""
    rows = "".join(f'<tr><td>{_e(c.category)}</td><td class="num">{c.n}</td><td class="num">{_pct(c.top1)}</td></tr>'
                   for c in shown)
    return (f'<img class="chart" src="{IMAGES}/categories.png" alt="SKU top-1 per category, worst first">{note}'
            f"<details><summary>As a table</summary><table><tr><th>category</th><th>photos</th><th>top-1</th></tr>"
            f"{rows}</table></details>")


def _confusions(report: EvalReport, images: _Images) -> str:
    examples: dict[tuple[str, str], list[int]] = defaultdict(list)
    for k, o in enumerate(report.outcomes):
        if not o.correct and o.ranked:
            examples[(o.truth, o.ranked[0])].append(k)
    if not examples:
        return '<p class="muted">No wrong answers.</p>'
    counts = Counter({pair: len(ks) for pair, ks in examples.items()})
    top = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:MAX_CONFUSIONS]
    catalog = _catalog_photos(report)
    rows = []
    for (truth, predicted), count in top:
        first = report.outcomes[examples[(truth, predicted)][0]]
        truth_photo = (_catalog_thumb(catalog[truth], images, small=True) if truth in catalog
                       else '<span class="muted">no catalog photo among the answers</span>')
        shots = "".join(_query_thumb("q", k, report.outcomes[k], images, small=True)
                        for k in examples[(truth, predicted)][:EXAMPLES_PER_CONFUSION])
        answered = _catalog_thumb(first.matches[0], images, small=True) if first.matches else ""
        rows.append(f'<tr class="confusion"><td class="num count">{count}</td><td>{truth_photo}<span class="sku">'
                    f'{_e(truth)}</span></td><td>{answered}'
                    f'<span class="sku">{_e(predicted)}</span></td><td><div class="examples">{shots}</div></td></tr>')
    return (f'<p class="muted">{sum(counts.values())} wrong answers in {len(counts)} (true SKU, answered SKU) pairs; '
            f"the {len(top)} most frequent:</p><table><tr><th>photos</th><th>true SKU</th><th>answered SKU</th>"
            f"<th>examples</th></tr>{''.join(rows)}</table>")


def _worst(report: EvalReport, images: _Images, budget: int) -> str:
    """Wrong answers (truth farthest down first, then the surest wrong answer), photos of products
    not in the catalog that were accepted (surest first), right answers that were rejected (closest
    to the threshold last), sharing the budget fairly."""
    wrong = [(k, o) for k, o in enumerate(report.outcomes) if not o.correct]
    wrong.sort(key=lambda ko: (-_truth_rank(ko[1]), -ko[1].score))
    accepted = [(k, o) for k, o in enumerate(report.unknown_outcomes) if o.decision is not None and o.decision.accepted]
    accepted.sort(key=lambda ko: -ko[1].decision.value)
    rejected = [(k, o) for k, o in enumerate(report.outcomes)
                if o.decision is not None and not o.decision.accepted and o.correct]
    rejected.sort(key=lambda ko: ko[1].decision.value)
    shown, counts = [], []
    kinds = (("wrong", "q", wrong), ("false-accept", "u", accepted), ("false-reject", "q", rejected))
    for (kind, prefix, picks), share in zip(kinds, _shares([len(p) for _, _, p in kinds], budget)):
        take = picks[:share]
        shown += [_gallery(kind, prefix, k, o, images) for k, o in take]
        if picks:
            counts.append(f"{KINDS[kind]}: {len(take)} of {len(picks)}")
    if not counts:
        return '<p class="muted">No wrong answers.</p>'
    return f'<p class="muted">Shown ({"; ".join(counts)}):</p>' + "".join(shown)


def _shares(sizes: list[int], budget: int) -> list[int]:
    """Split ``budget`` galleries fairly between kinds of ``sizes`` photos: equal shares, and what
    a small kind does not use goes to the others (so 45 false accepts are not crowded out by 130
    wrong answers)."""
    shares = [0] * len(sizes)
    left = budget
    while left > 0 and any(s < n for s, n in zip(shares, sizes)):
        wanting = [i for i, (s, n) in enumerate(zip(shares, sizes)) if s < n]
        each = max(1, left // len(wanting))
        for i in wanting:
            give = min(each, sizes[i] - shares[i], left)
            shares[i] += give
            left -= give
    return shares


def _gallery(kind: str, prefix: str, k: int, o: QueryOutcome, images: _Images) -> str:
    label = f"its product: {o.truth}" if kind == "false-accept" else f"true SKU: {o.truth}"
    facts = []
    if kind == "wrong" and o.matches:
        rank = _truth_rank(o)
        facts.append(f"truth at rank {rank}" if rank <= len(o.matches) else f"truth not in the top {len(o.matches)}")
    if o.decision is not None:
        d = o.decision
        facts.append(f"{d.rule} {d.value:.3f} {'&ge;' if d.accepted else '&lt;'} {d.threshold:.3g}: "
                     f"{'accepted' if d.accepted else 'rejected'}")
    matches = "".join(
        f'<li class="match {"right" if m.sku == o.truth else "wrong"}">{_catalog_thumb(m, images)}'
        f'<span class="score">{m.score:.3f}</span><span class="sku">{r}. {_e(m.sku)}</span>'
        f'<div class="name">{_e(m.name)}</div></li>' for r, m in enumerate(o.matches[:5], 1))
    return (f'<div class="gallery {kind}"><figure class="query">{_query_thumb(prefix, k, o, images)}<figcaption>'
            f'<span class="kind">{KINDS[kind]}</span><br><span class="sku">{_e(label)}</span><br>'
            f'<span class="muted" title="{_e(o.path)}">{_e(Path(o.path).name)}</span><br>{"<br>".join(facts)}'
            f'</figcaption></figure><ol class="matches">{matches or "<li>no answer</li>"}</ol></div>')


def _scores(report: EvalReport, images: _Images, rule: str) -> str:
    """Where right answers, wrong ones and photos of other products fall on the applied rule, and
    what each threshold would trade (DIR@FAR), so a threshold can be judged by eye."""
    values = [o.value(rule) for o in report.outcomes]
    correct = [o.correct for o in report.outcomes]
    groups = {"genuine": [v for v, c in zip(values, correct) if c],
              "impostor": [v for v, c in zip(values, correct) if not c]}
    if report.unknown_outcomes:
        groups["unknown"] = [o.value(rule) for o in report.unknown_outcomes]
    threshold = report.open_set.threshold if report.open_set else None
    report_plots.score_histograms(groups, rule, threshold, images.plot("scores.png"))
    out = (f'<div class="row"><img class="chart" src="{IMAGES}/scores.png" alt="histograms of {_e(rule)} for '
           f'right answers, wrong answers and photos of products not in the catalog">')
    if report.unknown_outcomes:
        at = report.open_set.at_threshold if report.open_set else None
        point = None
        if at is not None and at.false_accept_rate is not None:
            point = (at.false_accept_rate, at.known_accuracy, at.threshold)
        report_plots.dir_far_chart(values, correct, groups["unknown"], point, rule, images.plot("dir_far.png"))
        out += f'<img class="chart" src="{IMAGES}/dir_far.png" alt="DIR against FAR of {_e(rule)}">'
    return out + "</div>"


def _catalog_photos(report: EvalReport) -> dict[str, Match]:
    """A catalog photo of every SKU that appears among the answers (its first)."""
    found: dict[str, Match] = {}
    for o in (*report.outcomes, *report.unknown_outcomes):
        for m in o.matches:
            found.setdefault(m.sku, m)
    return found


def _catalog_thumb(m: Match, images: _Images, small: bool = False) -> str:
    return images.thumb(f"c-{int(m.image_id)}.jpg", m.image_path, f"catalog photo of {m.sku}", small)


def _query_thumb(prefix: str, k: int, o: QueryOutcome, images: _Images, small: bool = False) -> str:
    return images.thumb(f"{prefix}-{k}.jpg", o.path, f"query photo {Path(o.path).name}", small)


def _truth_rank(o: QueryOutcome) -> int:
    """1-based rank of the true SKU among the answers; one past the end when it is not there."""
    return o.ranked.index(o.truth) + 1 if o.truth in o.ranked else len(o.ranked) + 1


def _e(value: object) -> str:
    return html.escape(str(value))


def _pct(x: float | None) -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.1%}"


def _num(x: float | None) -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.3f}"
