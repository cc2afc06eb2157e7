"""The bundled workflows in ComfyUI's own frontend, driven by a headless Chromium (Playwright).

Each workflow is opened as a user opens it — Templates → the pack's entry → its card — and must
load without the frontend reporting a problem: no "N errors found" panel (unknown node types,
missing models, bad widget values), no dialog, no error toast, every node type registered. The
cards must show the pack's ``<workflow>.jpg`` thumbnails. Then each workflow is run on the tiny
models (its API prompt, shrunk as in ``test_nodes_host.py``, is queued under the browser's client
id, so the page receives the live previews, images and texts exactly as if it had queued it) and,
once the page shows the results, no two nodes' boxes (title bar included) may overlap — the
trainer grows when its preview arrives, text outputs grow their nodes.

Needs Playwright and a Chromium: ``pip install playwright`` into the python running pytest and
Debian's ``apt-get install chromium`` (or ``PROGRPO_CHROMIUM=/path/to/chrome``); skipped without
them, and, like every host test, without ``PROGRPO_COMFYUI``. ``PROGRPO_FRONTEND_SHOTS=DIR`` keeps
the screenshots (default: pytest's tmp dir).
"""
from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
for p in (HERE, REPO / "tests"):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))

CHROMIUM = os.environ.get("PROGRPO_CHROMIUM", "/usr/bin/chromium")
sync_api = pytest.importorskip("playwright.sync_api", reason="Playwright is not installed (pip install playwright; "
                                                             "see tests/host/README.md)")
pytestmark = pytest.mark.skipif(not Path(CHROMIUM).is_file(),
                                reason=f"no Chromium at {CHROMIUM} (apt-get install chromium, or set PROGRPO_CHROMIUM)")

from client import ui_to_api  # noqa: E402
from launcher import PACK_NAME  # noqa: E402
from test_nodes_host import tiny  # noqa: E402  (the shrinking used by the API runs)

WORKFLOWS = REPO / "workflows"
# Run order matters: the comparison loads the LoRA the training run saves.
NAMES = ["progrpo_train_lora", "progrpo_inspect_group", "progrpo_compare_lora", "progrpo_train_flux_fp8"]
VIEWPORT = {"width": 1920, "height": 1200}
GAP = 10  # the least room between two nodes' boxes (graph units), title bars included

# The model files the workflows name, as empty stand-ins, so the frontend finds them in its lists as it
# would on a user's machine (the runs use the tiny models instead).
PLACEHOLDERS = ["checkpoints/sd3.5_medium.safetensors", "text_encoders/clip_l.safetensors",
                "text_encoders/clip_g.safetensors", "text_encoders/t5xxl_fp8_e4m3fn.safetensors",
                "reward_models/PickScore_v1/model.safetensors", "loras/progrpo/sd35m_pickscore.safetensors",
                "diffusion_models/flux1-dev.safetensors", "vae/ae.safetensors"]

# Collects, from page load on, every toast / alert / dialog the frontend shows (some vanish quickly).
WATCH = """
window.__progrpoSeen = [];
new MutationObserver(ms => { for (const m of ms) for (const n of m.addedNodes) {
  if (!(n instanceof HTMLElement)) continue;
  for (const e of [n, ...n.querySelectorAll('.p-toast-message, [role=alert], [role=dialog], [role=alertdialog]')]) {
    if (!e.matches('.p-toast-message, [role=alert], [role=dialog], [role=alertdialog]')) continue;
    window.__progrpoSeen.push({cls: String(e.className), role: e.getAttribute('role') || '',
                               text: (e.innerText || '').slice(0, 400)});
  }
}}).observe(document, {childList: true, subtree: true});
"""

PROBLEMS_JS = """() => {
  const out = [];
  const visible = e => e.getClientRects().length > 0;
  // 1.49.6 reports load problems in a panel under the Run button ("Missing node: X", "4 errors found",
  // each with a "View details" button) rather than in a dialog
  for (const b of document.querySelectorAll('button'))
    if (visible(b) && /view details/i.test(b.innerText)) {
      let p = b;
      for (let i = 0; i < 4 && p.parentElement && p.innerText.trim() === b.innerText.trim(); i++) p = p.parentElement;
      out.push('error panel: ' + p.innerText.slice(0, 300).replace(/\\n/g, ' | '));
    }
  const text = document.body.innerText;
  for (const re of [/\\d+ errors? found/i, /missing (node|model)s?\\b[^\\n]*/i, /isn.t installed/i])
    if (re.test(text) && !out.some(o => o.startsWith('error panel'))) out.push('page text: ' + text.match(re)[0]);
  for (const d of document.querySelectorAll('[role=dialog], [role=alertdialog]'))
    if (visible(d)) out.push('dialog: ' + d.innerText.slice(0, 300).replace(/\\n/g, ' | '));
  for (const t of document.querySelectorAll('.p-toast-message-error, .p-toast-message-warn'))
    if (visible(t)) out.push('toast: ' + t.innerText.slice(0, 300).replace(/\\n/g, ' | '));
  for (const s of window.__progrpoSeen || [])
    if (/error|warn/i.test(s.cls) || /missing|not found|error/i.test(s.text))
      out.push('seen: ' + s.cls.slice(0, 60) + ' ' + s.text.replace(/\\n/g, ' | '));
  const LG = window.LiteGraph;
  for (const n of window.app.graph._nodes) {
    if (!LG.registered_node_types[n.type]) out.push(`node ${n.id}: unknown type ${n.type}`);
    if (n.has_errors) out.push(`node ${n.id} (${n.type}): has errors`);
  }
  return out;
}"""

BOXES_JS = """() => {
  const th = window.LiteGraph.NODE_TITLE_HEIGHT;
  return window.app.graph._nodes.map(n => ({id: String(n.id), type: n.type, title: n.title,
    x: n.pos[0], y: n.pos[1] - th, w: n.size[0], h: n.size[1] + th, imgs: (n.imgs || []).length,
    body: [...n.size], need: n.computeSize ? [...n.computeSize()] : null}));
}"""


def overlaps(boxes: list[dict], gap: float = GAP) -> list[str]:
    """Pairs of boxes that overlap or lie closer than ``gap`` to each other (in both directions)."""
    bad = []
    for i, a in enumerate(boxes):
        for b in boxes[i + 1:]:
            dx = min(a["x"] + a["w"], b["x"] + b["w"]) - max(a["x"], b["x"])
            dy = min(a["y"] + a["h"], b["y"] + b["h"]) - max(a["y"], b["y"])
            if dx > -gap and dy > -gap:
                bad.append(f"{a['id']} {a['title']!r} [{a['x']:.0f},{a['y']:.0f} {a['w']:.0f}x{a['h']:.0f}] and "
                           f"{b['id']} {b['title']!r} [{b['x']:.0f},{b['y']:.0f} {b['w']:.0f}x{b['h']:.0f}] "
                           f"overlap by {dx:.0f}x{dy:.0f} (negative: the gap, less than {gap})")
    return bad


@pytest.fixture(scope="module")
def shots(tmp_path_factory) -> Path:
    d = os.environ.get("PROGRPO_FRONTEND_SHOTS")
    path = Path(d) if d else tmp_path_factory.mktemp("frontend_shots")
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture(scope="module")
def page(comfy_server):
    """A Chromium page showing the session server's frontend, with the workflows' model names present."""
    models = comfy_server.server.models_dir
    made, dirs = [], []
    for rel in PLACEHOLDERS:
        f = models / rel
        if not f.exists():
            dirs += [d for d in reversed(f.relative_to(models).parents) if not (models / d).exists()]
            f.parent.mkdir(parents=True, exist_ok=True)
            f.write_bytes(b"")
            made.append(f)
    pw = sync_api.sync_playwright().start()
    browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True)
    try:
        pg = browser.new_page(viewport=VIEWPORT)
        pg.errors = []
        pg.responses = []
        pg.on("pageerror", lambda e: pg.errors.append(str(e)))
        pg.on("response", lambda r: pg.responses.append((r.url, r.status)))
        pg.add_init_script(WATCH)
        pg.goto(comfy_server.base_url)
        pg.wait_for_function("window.app && window.app.graph && window.app.canvas && window.LiteGraph",
                             timeout=120_000)
        pg.wait_for_timeout(2000)
        yield pg
    finally:
        browser.close()
        pw.stop()
        for f in made:  # the stand-ins, unless a run replaced one with a real file
            if f.is_file() and f.stat().st_size == 0:
                f.unlink()
        for d in reversed(dirs):  # and the folders made for them, if left empty
            if (models / d).is_dir() and not any((models / d).iterdir()):
                (models / d).rmdir()


def open_template(pg, name: str, shots: Path | None = None) -> None:
    """Templates → this pack → the card of ``name``; returns once the graph is on the canvas."""
    entry = pg.get_by_text(PACK_NAME, exact=True)
    if not entry.count() or not entry.first.is_visible():
        pg.evaluate("window.app.extensionManager.command.execute('Comfy.BrowseTemplates')")
        entry.first.wait_for(state="visible", timeout=30_000)
    entry.first.click()
    card = pg.get_by_test_id(f"template-workflow-{name}")
    card.wait_for(state="visible", timeout=30_000)
    thumb = card.locator("img").first  # the frontend fetches the .jpg and shows it as a blob: URL
    pg.wait_for_function("img => img.complete && img.naturalWidth > 0 && img.src.startsWith('blob:')",
                         arg=thumb.element_handle(), timeout=30_000)
    url = f"/api/workflow_templates/{PACK_NAME}/{name}.jpg"
    assert any(r.endswith(url) and status == 200 for r, status in pg.responses), f"{url} was not fetched"
    if shots is not None:
        pg.screenshot(path=str(shots / "templates_dialog.png"))
    pg.evaluate("window.__progrpoSeen = []")
    card.click()
    want = len(json.loads((WORKFLOWS / f"{name}.json").read_text())["nodes"])
    pg.wait_for_function(f"window.app.graph._nodes.length === {want} && "
                         "!document.querySelector('[data-testid=template-workflows-content]')", timeout=60_000)
    pg.wait_for_timeout(2500)  # a missing-node dialog or the error panel shows after the graph is configured
    if shots is not None:
        pg.screenshot(path=str(shots / f"{name}_page.png"))  # the whole page, panels and toasts included


def problems(pg) -> list[str]:
    return pg.evaluate(PROBLEMS_JS) + [f"page error: {e}" for e in pg.errors]


def boxes(pg) -> list[dict]:
    return pg.evaluate(BOXES_JS)


def fit_and_shoot(pg, path: Path) -> None:
    """Fit the whole graph into the part of the canvas no panel covers and screenshot just that."""
    clip = pg.evaluate("""async () => {
      await window.app.extensionManager.setting.set('Comfy.Minimap.Visible', false);
      await window.app.extensionManager.setting.set('LiteGraph.Canvas.MinFontSizeForLOD', 0);  // text at any zoom
      const th = window.LiteGraph.NODE_TITLE_HEIGHT, c = window.app.canvas, r = c.canvas.getBoundingClientRect();
      const ns = window.app.graph._nodes;
      const x0 = Math.min(...ns.map(n => n.pos[0])), y0 = Math.min(...ns.map(n => n.pos[1] - th));
      const x1 = Math.max(...ns.map(n => n.pos[0] + n.size[0])), y1 = Math.max(...ns.map(n => n.pos[1] + n.size[1]));
      const left = r.left + 150, top = r.top + 150, w = r.width - 150 - 40, h = r.height - 150 - 40, pad = 20;
      const s = Math.min((w - 2 * pad) / (x1 - x0), (h - 2 * pad) / (y1 - y0), 1.5);
      c.ds.scale = s;
      c.ds.offset[0] = (left - r.left + pad) / s - x0;
      c.ds.offset[1] = (top - r.top + pad) / s - y0;
      c.setDirty(true, true);
      return {x: left, y: top, width: Math.ceil((x1 - x0) * s + 2 * pad), height: Math.ceil((y1 - y0) * s + 2 * pad)};
    }""")
    pg.wait_for_timeout(800)
    pg.screenshot(path=str(path), clip=clip)


def run_in_page(pg, comfy_server, name: str, timeout: float = 600) -> dict:
    """Queue ``name`` on the tiny models under the page's client id; wait until the page shows it done."""
    ui = pg.evaluate("window.app.graph.serialize()")
    api = tiny(ui_to_api(ui, comfy_server.object_info()), run_name=f"frontend_{name}")  # one run folder each
    client_id = pg.evaluate("window.app.api.clientId")
    answer = comfy_server.post("/prompt", {"prompt": api, "client_id": client_id,
                                           "extra_data": {"extra_pnginfo": {"workflow": ui}}})
    entry = comfy_server.wait(answer["prompt_id"], timeout=timeout)
    shown = [nid for nid, out in entry["outputs"].items() if out.get("images") and nid in
             {str(n["id"]) for n in ui["nodes"]}]
    # the page has the results once the output nodes with images show them (a timeout fails the test:
    # the layout must be checked as grown by the results, not before they arrive)
    pg.wait_for_function("ids => ids.every(i => { const n = window.app.graph.getNodeById(i);"
                         " return !n || (n.imgs && n.imgs.length) })", arg=shown, timeout=30_000)
    pg.wait_for_timeout(1500)
    pg.evaluate("window.app.graph.setDirtyCanvas(true, true)")
    pg.wait_for_timeout(500)
    return entry


@pytest.mark.parametrize("name", NAMES)
def test_template_opens_without_problems(page, shots, name):
    t = time.perf_counter()
    open_template(page, name, shots)
    print(f"{name}: opened in {time.perf_counter() - t:.1f} s")
    fit_and_shoot(page, shots / f"{name}_loaded.png")
    assert not problems(page), "the frontend reports problems:\n" + "\n".join(problems(page))
    bad = overlaps(boxes(page))
    assert not bad, "nodes overlap as loaded:\n" + "\n".join(bad)


@pytest.mark.parametrize("name", NAMES)
def test_no_node_overlaps_another_after_a_run(page, shots, comfy_server, name):
    open_template(page, name)
    before = {b["id"]: b for b in boxes(page)}
    t = time.perf_counter()
    run_in_page(page, comfy_server, name)
    print(f"{name}: ran in {time.perf_counter() - t:.1f} s")
    after = boxes(page)
    for b in after:
        a = before[b["id"]]
        if b["need"] and a["need"] and b["need"] != a["need"]:
            print(f"  node {b['id']} {b['title']!r} needs {a['need'][0]:.0f}x{a['need'][1]:.0f} -> "
                  f"{b['need'][0]:.0f}x{b['need'][1]:.0f} (frontend's computeSize, no title bar); "
                  f"has {b['body'][0]:.0f}x{b['body'][1]:.0f}")
        if (a["w"], a["h"]) != (b["w"], b["h"]):
            print(f"  node {b['id']} {b['title']!r}: {a['w']:.0f}x{a['h']:.0f} -> {b['w']:.0f}x{b['h']:.0f} "
                  f"(title bar included; {b['imgs']} image(s))")
    fit_and_shoot(page, shots / f"{name}_after_run.png")
    assert not problems(page), "the frontend reports problems:\n" + "\n".join(problems(page))
    bad = overlaps(after)
    assert not bad, "nodes overlap after the run:\n" + "\n".join(bad)
    # the room the frontend computes for a node's content (widgets, texts, images): a node smaller than
    # that is either grown over its neighbours by the frontend or shows its content clipped
    small = [f"{b['id']} {b['title']!r}: {b['body'][0]:.0f}x{b['body'][1]:.0f}, needs {b['need'][0]:.0f}x{b['need'][1]:.0f}"
             for b in after if b["need"] and (b["body"][0] < b["need"][0] or b["body"][1] < b["need"][1])]
    assert not small, "nodes smaller than their content after the run:\n" + "\n".join(small)
