"""A small HTTP client for a running ComfyUI server, and a UI→API workflow converter.

Standard library only (``urllib``), so it runs under any python, including the test
runner's, which need not have ComfyUI's dependencies.

- :class:`ComfyClient` — ``object_info()``, ``queue(prompt) -> prompt_id``,
  ``wait(prompt_id, timeout) -> history entry``, ``run(prompt)`` (both), ``interrupt()``,
  ``images(entry)`` / ``view(ref)``, ``history()``, ``queue_state()``, ``free()``.
- :func:`ui_to_api` — converts a UI-format workflow (what the frontend saves; nodes +
  links + ``widgets_values``) into the API prompt format that ``POST /prompt`` executes,
  the way the frontend's ``graphToPrompt`` does.

Prompts failing validation raise :class:`PromptRejected`; prompts failing while running raise
:class:`PromptFailed` (:class:`PromptInterrupted` when interrupted). Both carry the server's
error text (node id, node type, exception message and traceback) in their message.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable


class ComfyError(RuntimeError):
    """Base class of this client's errors."""


class PromptRejected(ComfyError):
    """``POST /prompt`` answered 400: the graph failed validation (``.response`` has the JSON)."""

    def __init__(self, message: str, response: dict):
        super().__init__(message)
        self.response = response


class PromptFailed(ComfyError):
    """The prompt ran and ended with status ``error`` (``.entry`` is its history entry)."""

    def __init__(self, message: str, entry: dict):
        super().__init__(message)
        self.entry = entry


class PromptInterrupted(PromptFailed):
    """The prompt was stopped by ``POST /interrupt``."""


class ComfyClient:
    """Talks to one ComfyUI server at ``base_url`` (e.g. ``http://127.0.0.1:8199``).

    ``alive`` is an optional callable returning False once the server process has died;
    :meth:`wait` then fails at once instead of polling until its timeout. ``server`` is the
    launcher that started the server, when there is one (``launcher.ComfyServer``: its
    ``output_dir``, ``models_dir``, ``custom_nodes_dir``, ``log_text()``…).
    """

    def __init__(self, base_url: str, *, timeout: float = 60.0, alive: Callable[[], bool] | None = None,
                 server=None):
        self.base_url = base_url.rstrip("/")
        self.server = server
        self.timeout = timeout
        self.client_id = uuid.uuid4().hex
        self._alive = alive
        self._object_info: dict | None = None

    # -- transport -------------------------------------------------------------------------

    def _request(self, method: str, path: str, body=None, *, raw: bool = False):
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.base_url + path, data=data, method=method)
        if data is not None:
            req.add_header("Content-Type", "application/json")
        with urllib.request.urlopen(req, timeout=self.timeout) as resp:
            payload = resp.read()
        if raw:
            return payload
        return json.loads(payload) if payload.strip() else None

    def get(self, path: str):
        """GET ``path`` and decode the JSON answer."""
        return self._request("GET", path)

    def post(self, path: str, body=None):
        """POST ``body`` as JSON to ``path`` and decode the JSON answer (if any)."""
        return self._request("POST", path, body if body is not None else {})

    # -- API -------------------------------------------------------------------------------

    def object_info(self, node_class: str | None = None, *, refresh: bool = False) -> dict:
        """``GET /object_info`` (cached; ``refresh=True`` refetches) or one class's entry."""
        if node_class is not None:
            return self.get("/object_info/" + urllib.parse.quote(node_class))[node_class]
        if self._object_info is None or refresh:
            self._object_info = self.get("/object_info")
        return self._object_info

    def queue(self, api_prompt: dict, *, extra_data: dict | None = None, front: bool = False) -> str:
        """``POST /prompt`` with an API-format graph; returns the prompt id.

        Raises :class:`PromptRejected` with the validation errors when the server answers 400.
        """
        body = {"prompt": api_prompt, "client_id": self.client_id}
        if extra_data:
            body["extra_data"] = extra_data
        if front:
            body["front"] = True
        try:
            answer = self.post("/prompt", body)
        except urllib.error.HTTPError as e:
            text = e.read().decode(errors="replace")
            try:
                response = json.loads(text)
            except ValueError:
                response = {"error": text}
            raise PromptRejected(f"ComfyUI rejected the prompt (HTTP {e.code}):\n{format_rejection(response)}",
                                 response) from None
        return answer["prompt_id"]

    def history(self, prompt_id: str | None = None) -> dict:
        """``GET /history[/{prompt_id}]`` — finished prompts keyed by id."""
        return self.get("/history" + (f"/{prompt_id}" if prompt_id else ""))

    def wait(self, prompt_id: str, timeout: float = 300.0, *, poll: float = 0.1) -> dict:
        """Poll until ``prompt_id`` finished; return its history entry.

        Entry keys: ``prompt``, ``outputs`` (node id → ``{"images": [...], ...}``), ``status``
        (``status_str``, ``completed``, ``messages``), ``meta``. Raises :class:`PromptFailed` (or
        :class:`PromptInterrupted`) with the server's error text when it did not succeed, and
        ``TimeoutError`` after ``timeout`` seconds.
        """
        deadline = time.monotonic() + timeout
        while True:
            entry = self.history(prompt_id).get(prompt_id)
            if entry is not None and entry.get("status", {}).get("status_str") in ("success", "error"):
                break
            if entry is not None and entry.get("status", {}).get("completed"):
                break
            if self._alive is not None and not self._alive():
                raise ComfyError(f"the ComfyUI server died while running prompt {prompt_id}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"prompt {prompt_id} not finished after {timeout:.0f} s; "
                                   f"queue: {self.queue_state()}")
            time.sleep(poll)
        status = entry.get("status") or {}
        if status.get("status_str") == "success":
            return entry
        messages = {m[0]: m[1] for m in status.get("messages", []) if len(m) == 2}
        if "execution_interrupted" in messages:
            raise PromptInterrupted(f"prompt {prompt_id} was interrupted", entry)
        raise PromptFailed(f"prompt {prompt_id} failed:\n{format_execution_error(messages)}", entry)

    def run(self, api_prompt: dict, timeout: float = 300.0, **queue_kwargs) -> dict:
        """:meth:`queue` then :meth:`wait`."""
        return self.wait(self.queue(api_prompt, **queue_kwargs), timeout)

    def interrupt(self, prompt_id: str | None = None) -> None:
        """``POST /interrupt``: stop the running prompt (only ``prompt_id``, when given)."""
        self.post("/interrupt", {"prompt_id": prompt_id} if prompt_id else {})

    def queue_state(self) -> dict:
        """``GET /queue`` → ``{"queue_running": [...], "queue_pending": [...]}``."""
        return self.get("/queue")

    def free(self, *, unload_models: bool = True, free_memory: bool = True) -> None:
        """``POST /free``: unload models / drop cached node outputs."""
        self.post("/free", {"unload_models": unload_models, "free_memory": free_memory})

    def system_stats(self) -> dict:
        return self.get("/system_stats")

    def view(self, ref: dict) -> bytes:
        """Bytes of an output file given its ``{"filename", "subfolder", "type"}`` reference."""
        query = urllib.parse.urlencode({k: ref.get(k, "") for k in ("filename", "subfolder", "type")})
        return self._request("GET", "/view?" + query, raw=True)

    @staticmethod
    def images(entry: dict, node_id: str | None = None) -> list[dict]:
        """The image references (``filename``, ``subfolder``, ``type``) in a history entry."""
        outputs = entry.get("outputs", {})
        ids = [node_id] if node_id is not None else list(outputs)
        return [img for i in ids for img in outputs.get(i, {}).get("images", [])]


def format_rejection(response: dict) -> str:
    """Readable text of a ``POST /prompt`` 400 answer (top error plus per-node errors)."""
    lines = []
    err = response.get("error")
    if isinstance(err, dict):
        lines.append(f"{err.get('type', '')}: {err.get('message', '')} {err.get('details', '')}".strip())
    elif err:
        lines.append(str(err))
    for node_id, node in (response.get("node_errors") or {}).items():
        for e in node.get("errors", []):
            lines.append(f"  node {node_id} ({node.get('class_type')}): {e.get('message')}: {e.get('details')}")
    return "\n".join(lines) or json.dumps(response)


def format_execution_error(messages: dict) -> str:
    """Readable text of the ``execution_error`` message of a failed prompt."""
    err = messages.get("execution_error")
    if not err:
        return json.dumps(messages, indent=1)[:4000]
    tb = "".join(err.get("traceback") or [])
    return (f"node {err.get('node_id')} ({err.get('node_type')}): {err.get('exception_type')}: "
            f"{err.get('exception_message')}\n{tb}")


# ---------------------------------------------------------------------------------------------
# UI (graph) format → API (prompt) format

#: Frontend-only node types: never sent to the backend.
NOTE_TYPES = frozenset({"Note", "MarkdownNote"})
#: Input types the frontend draws as widgets (their values live in ``widgets_values``): the
#: frontend's widget constructors (frontend 1.49, shipped with ComfyUI 0.33).
WIDGET_TYPES = frozenset({
    "INT", "FLOAT", "BOOLEAN", "STRING", "COMBO", "MARKDOWN", "COLOR", "IMAGECOMPARE", "BOUNDING_BOX",
    "CHART", "GALLERIA", "PAINTER", "COMPOSITOR", "TEXTAREA", "CURVE", "RANGE", "VIDEO_EDIT",
    "BOUNDING_BOXES", "COLORS",
})
#: Options of a COMBO input that make the frontend add an upload button widget.
UPLOAD_OPTIONS = ("image_upload", "video_upload", "animated_image_upload")
#: Node modes in the UI format.
MODE_MUTED, MODE_BYPASSED = 2, 4


def _is_widget(spec) -> bool:
    """True if an object_info input spec ``(type, options)`` becomes a widget in the frontend."""
    kind = spec[0]
    opts = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
    if opts.get("forceInput"):
        return False
    if isinstance(kind, list):  # old-style combo: the list of options
        return True
    return kind in WIDGET_TYPES or bool(opts.get("widgetType"))


def _widget_extras(name: str, spec) -> int:
    """How many frontend-only values follow this widget's own value in ``widgets_values``.

    INT widgets get a "control after generate" combo (fixed/increment/decrement/randomize)
    when they declare ``control_after_generate`` or, if they do not say, when named
    ``seed``/``noise_seed`` (a V1 convention the frontend keeps); FLOAT only when declared;
    a COMBO that declares it gets the control combo plus a filter-list string.
    """
    kind = "COMBO" if isinstance(spec[0], list) else spec[0]
    opts = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
    control = opts.get("control_after_generate")
    if kind == "INT":
        if control is None:
            control = name in ("seed", "noise_seed")
        return 1 if control else 0
    if kind == "FLOAT":
        return 1 if control else 0
    if kind == "COMBO":
        return 2 if control else 0
    return 0


def _input_order(info: dict) -> list[tuple[str, str, list]]:
    """``(section, name, spec)`` for required then optional inputs, in declaration order."""
    inputs = info.get("input", {})
    order = info.get("input_order", {})
    out = []
    for section in ("required", "optional"):
        specs = inputs.get(section) or {}
        names = order.get(section) or list(specs)
        out += [(section, n, specs[n]) for n in names if n in specs]
    return out


def widget_values(node: dict, info: dict) -> dict:
    """Map a UI node's ``widgets_values`` onto its widget inputs' names.

    Uses ``widgets_values_named`` (saved by recent frontends) or a dict ``widgets_values``
    when present; otherwise walks ``widgets_values`` positionally in declaration order,
    skipping the frontend-only values (see :func:`_widget_extras`; plus the upload button's
    value after the required inputs of nodes with an upload combo).
    """
    raw = node.get("widgets_values")
    named = node.get("widgets_values_named")
    widgets = [(section, n, s) for section, n, s in _input_order(info) if _is_widget(s)]
    if isinstance(raw, dict):
        named = {**raw, **(named or {})}
    if isinstance(named, dict):
        return {n: named[n] for _, n, _ in widgets if n in named}

    values = list(raw or [])
    out, i = {}, 0
    has_upload = False
    for k, (section, name, spec) in enumerate(widgets):
        if i >= len(values):
            break
        out[name] = values[i]
        i += 1 + _widget_extras(name, spec)
        opts = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
        has_upload |= section == "required" and any(opts.get(o) for o in UPLOAD_OPTIONS)
        last_required = k + 1 == len(widgets) or widgets[k + 1][0] != "required"
        if has_upload and section == "required" and last_required:
            i += 1  # the upload button's value ("image"), added after the required inputs
    return out


def _link_table(workflow: dict) -> dict:
    """link id → ``(origin_id, origin_slot, target_id, target_slot, type)``; both link forms."""
    table = {}
    for link in workflow.get("links") or []:
        if isinstance(link, dict):
            table[link["id"]] = (link["origin_id"], link["origin_slot"], link["target_id"],
                                 link["target_slot"], link.get("type"))
        else:
            table[link[0]] = (link[1], link[2], link[3], link[4], link[5] if len(link) > 5 else None)
    return table


def _types_match(a, b) -> bool:
    if a in ("*", "", None) or b in ("*", "", None):
        return True
    return bool(set(str(a).split(",")) & set(str(b).split(",")))


def ui_to_api(workflow: dict, object_info: dict) -> dict:
    """Convert a UI-format workflow to the API prompt format ``{node_id: {class_type, inputs}}``.

    Rules (as the frontend's graphToPrompt): widget values map onto widget inputs by
    declaration order (see :func:`widget_values`); a linked input becomes
    ``[source_node_id, output_slot]``; muted nodes (mode 2) are dropped and so are links from
    them (a linked widget input then keeps its widget value); bypassed nodes (mode 4) are
    dropped and links through them go to the input of the same slot when its type fits,
    else to the first input of the link's type; ``Reroute`` nodes are followed;
    ``PrimitiveNode`` values are inlined; Note/MarkdownNote nodes are ignored. Subgraphs
    and legacy group nodes are not supported (``ValueError``). Dynamic-prompt syntax in
    text widgets is passed through unexpanded.
    """
    nodes = {n["id"]: n for n in workflow.get("nodes", [])}
    links = _link_table(workflow)
    subgraph_ids = {s.get("id") for s in (workflow.get("definitions") or {}).get("subgraphs") or []}

    def check_known(node: dict) -> None:
        kind = node.get("type")
        if kind in subgraph_ids:
            raise ValueError(f"node {node['id']} is a subgraph ({kind}); ui_to_api does not flatten "
                             f"subgraphs — unpack it in the editor, or keep an API-format copy")
        if kind not in object_info:
            raise ValueError(f"node {node['id']} has type {kind!r}, which this server does not know "
                             f"(missing custom node pack, or a typo); known types come from /object_info")

    def resolve(link_id, depth: int = 0):
        """Where a link really comes from: ``[node_id, slot]``, ``("value", v)`` or None."""
        if depth > 100:
            raise ValueError(f"link {link_id}: cycle through reroute/bypassed nodes")
        if link_id is None or link_id not in links:
            return None
        origin_id, origin_slot, _, _, link_type = links[link_id]
        src = nodes.get(origin_id)
        if src is None or src.get("mode") == MODE_MUTED:
            return None
        kind = src.get("type")
        if kind == "Reroute":
            ins = src.get("inputs") or []
            return resolve(ins[0].get("link"), depth + 1) if ins else None
        if kind == "PrimitiveNode":
            vals = src.get("widgets_values") or []
            return ("value", vals[0]) if vals else None
        if src.get("mode") == MODE_BYPASSED:
            ins = src.get("inputs") or []
            out_type = ((src.get("outputs") or [{}] * (origin_slot + 1))[origin_slot] or {}).get("type")
            if origin_slot < len(ins) and _types_match(ins[origin_slot].get("type"), out_type):
                pick = origin_slot
            else:
                pick = next((k for k, x in enumerate(ins) if x.get("type") == link_type),
                            next((k for k, x in enumerate(ins) if _types_match(x.get("type"), link_type)), None))
            return None if pick is None else resolve(ins[pick].get("link"), depth + 1)
        check_known(src)
        return [str(origin_id), origin_slot]

    prompt = {}
    for node in sorted(nodes.values(), key=lambda n: (n.get("order", 0), n["id"])):
        kind = node.get("type")
        if kind in NOTE_TYPES or kind in ("Reroute", "PrimitiveNode"):
            continue
        if node.get("mode") in (MODE_MUTED, MODE_BYPASSED):
            continue
        check_known(node)
        info = object_info[kind]
        inputs = dict(widget_values(node, info))
        for slot in node.get("inputs") or []:
            source = resolve(slot.get("link"))
            if source is None:
                continue
            if isinstance(source, tuple):  # a PrimitiveNode's value
                inputs[slot["name"]] = source[1]
            else:
                inputs[slot["name"]] = source
        entry = {"class_type": kind, "inputs": inputs}
        entry["_meta"] = {"title": node.get("title") or info.get("display_name") or kind}
        prompt[str(node["id"])] = entry
    return prompt


def output_nodes(api_prompt: dict, object_info: dict) -> list[str]:
    """Ids of the nodes in ``api_prompt`` that are output nodes (what the server will run)."""
    return [i for i, n in api_prompt.items() if object_info.get(n["class_type"], {}).get("output_node")]

