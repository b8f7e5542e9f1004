"""Which notebook front end this kernel serves, and what that front end needs from us.

Why it matters: the same panel meets three kinds of page, and two of them differ in ways the
kernel must act on.

- **Colab** renders third-party widgets (our recorder is an anywidget) only after
  ``google.colab.output.enable_custom_widget_manager()``: from then on Colab's display hook tags
  every widget display with the manager's URL, and its page loads that manager for it. A widget
  displayed *before* the call shows as an error. :func:`enable_colab_widgets` makes the call,
  once per kernel, and :func:`speech2image_nb.app`, :class:`~speech2image_nb.Panel` and
  :class:`~speech2image_nb.Recorder` call it before they display anything. Colab also has no
  "reload the page" fix (outputs are rebuilt by running the cell), so some error texts differ.
- **VS Code** blocks ``getUserMedia`` in notebook outputs (microsoft/vscode#119127): the
  recorder can never open a microphone there, so the panel says so and points to the upload.
- **Jupyter** (JupyterLab, Notebook 7, classic Notebook, anything else): the default. The
  classic Notebook (6.5, and school JupyterHubs still on it) loads each front-end extension on its
  own: anywidget's only tells the page's module loader where ``anywidget`` lives, and when our
  recorder's model arrives first, the loader asks for ``/static/anywidget.js``, gets a 404, the
  model fails, and so does every container holding it: the panel's cell stays blank, with no
  error on the page. :func:`prepare_classic_widget_loading` tells the loader itself, before our
  first model is opened, and :func:`watch_classic_display` puts one line in the cell if the panel
  still does not show.

What the kernel can see, and what we read:

- Colab's kernel imports ``google.colab`` when it starts, so it is in ``sys.modules``. Nothing
  here imports it outside Colab.
- VS Code's Jupyter extension runs start-up code in every Python kernel it starts (not in live
  remote kernels) that sets ``__vsc_ipynb_file__`` (the notebook's path) in the user namespace.
  For local kernels its launcher also sets ``PYDEVD_IPYTHON_COMPATIBLE_DEBUGGING=1``, and the
  kernel inherits VS Code's own ``VSCODE_PID``. ``JPY_PARENT_PID`` says nothing: jupyter_client
  sets it for every kernel it launches.

Nothing is read at import time; every function looks when it is called.
"""

from __future__ import annotations

import functools
import importlib
import logging
import os
import sys
from collections.abc import Mapping
from typing import Any, Literal

__all__ = [
    "COLAB",
    "JUPYTER",
    "PANEL_NOT_SHOWN",
    "RECORDER_NOT_SHOWN",
    "VSCODE",
    "VSCODE_NO_MICROPHONE",
    "Frontend",
    "detect_frontend",
    "enable_colab_widgets",
    "in_colab",
    "prepare_classic_widget_loading",
    "watch_classic_display",
]

logger = logging.getLogger(__name__)

Frontend = Literal["colab", "vscode", "jupyter"]
COLAB: Frontend = "colab"
VSCODE: Frontend = "vscode"
JUPYTER: Frontend = "jupyter"

#: The one line the panel shows in VS Code (its notebooks get no microphone at all).
VSCODE_NO_MICROPHONE = (
    "VS Code gives notebooks no microphone: upload a recording, or open the notebook in JupyterLab or Colab."
)

_VSCODE_NOTEBOOK_VARIABLE = "__vsc_ipynb_file__"  # set by VS Code's kernel start-up code
_VSCODE_KERNEL_ENV = ("VSCODE_PID", "PYDEVD_IPYTHON_COMPATIBLE_DEBUGGING")  # both: a VS Code-launched kernel


def in_colab(*, modules: Mapping[str, Any] | None = None) -> bool:
    """True inside a Google Colab kernel (``google.colab`` is imported there at start-up)."""
    return "google.colab" in (sys.modules if modules is None else modules)


def _user_namespace() -> Mapping[str, Any]:
    """The running IPython's user namespace, or an empty one outside IPython."""
    ipython = sys.modules.get("IPython")
    shell = ipython.get_ipython() if ipython is not None else None
    namespace = getattr(shell, "user_ns", None)
    return namespace if isinstance(namespace, Mapping) else {}


def detect_frontend(
    *,
    modules: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
    user_ns: Mapping[str, Any] | None = None,
) -> Frontend:
    """Name the front end this kernel serves: ``"colab"``, ``"vscode"`` or ``"jupyter"``.

    Parameters
    ----------
    modules, environ, user_ns
        What to look at (default: ``sys.modules``, ``os.environ`` and the running IPython's user
        namespace, read now). See the module docstring for the signs each front end leaves.
    """
    if in_colab(modules=modules):
        return COLAB
    namespace = _user_namespace() if user_ns is None else user_ns
    env = os.environ if environ is None else environ
    if _VSCODE_NOTEBOOK_VARIABLE in namespace or all(env.get(name) for name in _VSCODE_KERNEL_ENV):
        return VSCODE
    return JUPYTER


def enable_colab_widgets() -> bool:
    """In Colab, turn on its custom widget manager (once per kernel); elsewhere do nothing.

    Call it before displaying any widget: Colab's display hook tags only the displays that come
    after it. Safe to call from every constructor: the call happens once, and a Colab that cannot
    do it (an old runtime) is logged, not raised, so the panel still shows what it can.

    Returns
    -------
    bool
        True when running in Colab and the manager is on.
    """
    if not in_colab():
        return False
    try:
        _enable_custom_widget_manager()
    except Exception:
        logger.warning("could not enable Colab's custom widget manager", exc_info=True)
        return False
    return True


@functools.lru_cache(maxsize=1)
def _enable_custom_widget_manager() -> None:
    """The Colab call itself; cached, so it runs once per kernel (a failure is retried next time)."""
    output = importlib.import_module("google.colab.output")
    output.enable_custom_widget_manager()
    logger.debug("Colab custom widget manager enabled")


# --- the classic Notebook: anywidget's module path, and a line when a panel does not show ---------

#: Sets the module loader's path for ``anywidget`` (what anywidget's own nbextension does) when the
#: page has not set it yet. Runs only where there is a classic Notebook page with requirejs.
_ANYWIDGET_PATH_JS = """(function () {
  var rjs = window.requirejs;
  if (!rjs || !rjs.config || !window.Jupyter || !window.Jupyter.notebook) return;
  var ctx = rjs.s && rjs.s.contexts && rjs.s.contexts._;
  var map = ctx && ctx.config && ctx.config.map && ctx.config.map['*'];
  if (map && map.anywidget) return;
  rjs.config({map: {'*': {anywidget: 'nbextensions/anywidget/index'}}});
})();"""

#: What a classic Notebook cell says when its panel did not render (the JS below writes it).
PANEL_NOT_SHOWN = "The panel did not appear: reload the page (F5), then run this cell again."
RECORDER_NOT_SHOWN = "The recorder did not appear: reload the page (F5), then run this cell again."
_NOT_SHOWN_AFTER_MS = 8000  # after the cell has finished; a panel renders well within a second

_WATCH_JS = """(function (out) {
  if (!out || !window.Jupyter || !window.Jupyter.notebook) return;
  var node = out.jquery ? out[0] : out;
  var since = null, line = null, polls = 0, modelId = %(model_id)s;
  var MIME = 'application/vnd.jupyter.widget-view+json';
  // The widget manager, when it finishes starting after this cell displayed the widget,
  // re-renders the page's widget outputs; ours had its model id cleared when its first view was
  // removed, and is hidden. Put the id back and render the cell again (once per widget).
  function heal(cell) {
    var healed = window.__s2iHealed || (window.__s2iHealed = {});
    if (!modelId || healed[modelId]) return false;
    var nb = window.Jupyter.notebook;
    var code = nb.get_cells().filter(function (c) { return c.element && c.element[0] === cell; })[0];
    var outputs = (code && code.output_area && code.output_area.outputs) || [];
    var blank = outputs.filter(function (o) {
      return o.data && o.data[MIME] && o.data[MIME].model_id === '';
    });
    if (blank.length !== 1 || !nb.render_cell_output) return false;
    healed[modelId] = true;
    blank[0].data[MIME].model_id = modelId;
    nb.render_cell_output(code);
    return true;
  }
  // The widget manager asks the kernel, as it starts, which widgets exist, and opens a channel of
  // its own for each one it has not seen yet. When that answer overtakes the messages that create
  // this cell's widgets, some of them end up with two models: the one the panel draws and another
  // that receives the kernel's updates (an empty grid, a Save button that stays grey), or that the
  // manager hands out when the kernel places the widget somewhere else later (a copy that never
  // changes). Make the model that draws each widget of this display the one the manager knows and
  // the one its messages reach, asking the kernel for its state when they did not; checked every
  // half second for ten minutes, once per widget tree.
  function follow() {
    var kernel = window.Jupyter.notebook.kernel;
    var wm = kernel && kernel.widget_manager, cm = kernel && kernel.comm_manager;
    if (!wm || !cm || !wm._models || !cm.comms || !wm._models[modelId]) return;
    Promise.resolve(wm._models[modelId]).then(function (root) {
      var seen = {}, todo = [root];
      while (todo.length) {
        var model = todo.pop();
        if (!model || !model.model_id || seen[model.model_id]) continue;
        seen[model.model_id] = true;
        reroute(wm, cm, model);
        var attrs = model.attributes || {};
        Object.keys(attrs).forEach(function (key) {
          [].concat(attrs[key]).forEach(function (v) { if (v && v.model_id && v.comm) todo.push(v); });
        });
      }
    }).catch(function () {});
  }
  function reroute(wm, cm, model) {
    var id = model.model_id, routed = cm.comms[id], known = wm._models[id];
    if (!routed || !model.comm) return;
    var knownModel = Promise.resolve(known).catch(function () { return null; });
    Promise.all([routed, knownModel]).then(function (found) {
      // a message or a model that arrived meanwhile: look again at the next check
      if (!found[0] || cm.comms[id] !== routed || wm._models[id] !== known) return;
      if (found[1] !== model) wm._models[id] = Promise.resolve(model);
      if (found[0] === model.comm) return;
      cm.comms[id] = Promise.resolve(model.comm);
      model.comm.send({method: 'request_state'}, {});
    }).catch(function () {});
  }
  var following = window.__s2iFollowing || (window.__s2iFollowing = {});
  if (modelId && !following[modelId]) {
    var rounds = 0;
    following[modelId] = setInterval(function () {
      rounds += 1;
      if (rounds > 1200) clearInterval(following[modelId]);
      else follow();
    }, 500);
  }
  var timer = setInterval(function () {
    polls += 1;
    // looked up at each poll: the output is put in the page only after this script has run
    var cell = node && node.closest && node.closest('.cell');
    if (!cell) { if (polls > 20) clearInterval(timer); return; }
    if (cell.querySelector(%(selector)s)) {
      if (line) line.remove();
      clearInterval(timer);
      return;
    }
    if (heal(cell)) return;
    var prompt = cell.querySelector('.input_prompt');
    if (prompt && prompt.textContent.indexOf('*') >= 0) { since = null; return; }
    if (since === null) since = Date.now();
    if (!line && Date.now() - since >= %(after_ms)d) {
      line = document.createElement('div');
      line.className = 's2i-not-shown';
      line.style.cssText = 'color:#b00020;font-family:sans-serif;padding:4px 0;';
      line.textContent = %(message)s;
      node.appendChild(line);
    }
    if (polls > 1200) clearInterval(timer);
  }, 500);
})(typeof element !== 'undefined' ? element : null);"""


def _kernel_display(js: str) -> None:
    """Send ``js`` as a display of this cell, where a notebook kernel runs; elsewhere do nothing.

    A front end without a JavaScript renderer, or an untrusted page, shows the empty text instead.
    """
    ipython = sys.modules.get("IPython")
    shell = ipython.get_ipython() if ipython is not None else None
    if shell is None or getattr(shell, "kernel", None) is None:
        return
    from IPython.display import display

    display({"application/javascript": js, "text/plain": ""}, raw=True)


def prepare_classic_widget_loading() -> None:
    """Before our first anywidget model opens: make sure a classic Notebook page can load its module.

    See the module docstring for the race it closes. Outside the classic Notebook the script does
    nothing; Colab and VS Code get no output at all.
    """
    if detect_frontend() == JUPYTER:
        _kernel_display(_ANYWIDGET_PATH_JS)


def watch_classic_display(selector: str, *, model_id: str = "", message: str = PANEL_NOT_SHOWN) -> None:
    """Display, before a widget, a watch that writes ``message`` in the cell if ``selector`` never shows.

    Classic Notebook only: a widget whose model fails to load leaves its output area empty, with
    nothing on the page to say so; this line tells the person the fix. It disappears if the widget
    shows after all. A widget that the page's widget manager hid while it finished starting
    (see the script) is shown again, once, from ``model_id``; and when that manager's start-up made
    a second model for a widget under ``model_id``, the model drawn stays the one that receives the
    kernel's updates and the one the manager hands out when the kernel places the widget again.
    """
    if detect_frontend() != JUPYTER:
        return
    import json

    _kernel_display(
        _WATCH_JS
        % {
            "selector": json.dumps(selector),
            "model_id": json.dumps(model_id),
            "after_ms": _NOT_SHOWN_AFTER_MS,
            "message": json.dumps(message),
        }
    )
