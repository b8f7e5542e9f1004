// Streaming microphone recorder (anywidget front end).
//
// One capture controller per model (made in `initialize`), shared by all its views, so that a
// widget displayed twice still opens the microphone once. The AudioWorklet mixes to mono,
// resamples to `sample_rate` (16 kHz) and cuts chunks of `chunk_ms`; each chunk goes to the
// kernel as `model.send({kind: "chunk", seq}, undefined, [buffer])`. See widget.py for the protocol.
//
// A take ends by itself, cleanly, when the browser stops the audio under it: the AudioContext
// turns "suspended" (a hidden tab on a phone, a page the browser froze) or "interrupted" (Safari:
// a call, another app took the microphone). No more audio would come, and a take left open would
// keep the kernel waiting for it; so the take stops as if Stop had been pressed, with what was
// recorded until then, the widget says why, and the next Record opens a new context. The state is
// checked again when the tab becomes visible, in case the change came while the page was frozen.

const MESSAGES = {
  "insecure-context":
    "The browser offers no microphone on this page because it is not a secure context: " +
    "open Jupyter at http://localhost:8888 (or 127.0.0.1) or over https.",
  "permission-denied":
    "The browser refused access to the microphone: allow it in the address bar's site " +
    "settings, then press record again.",
  "no-microphone":
    "No microphone could be opened: plug one in (or close the program using it), then press " +
    "record again.",
  "audio-context":
    "The browser could not start audio processing: reload the page and press record again, " +
    "or use an up-to-date Chrome, Edge or Firefox.",
};

const FLUSH_TIMEOUT_MS = 500; // wait this long for the worklet's last partial chunk
const RESUME_TIMEOUT_MS = 1500; // an AudioContext that is not running by then will not start
const LEVEL_FLOOR_DB = -60; // the meter's empty end
const SUSPENDED_NOTICE = // the same text as SUSPENDED_NOTICE in widget.py
  "Recording stopped: the browser paused audio (the tab was hidden, or another app took the " +
  "microphone). What was recorded is kept; press record to go on.";

// Runs in the audio thread. Mixes to mono, resamples (box filter when downsampling, linear
// interpolation when upsampling), converts to int16, posts chunks and a level every ~50 ms.
const WORKLET_SOURCE = `
class S2IPcmChunker extends AudioWorkletProcessor {
  constructor(options) {
    super();
    const o = options.processorOptions;
    this.step = sampleRate / o.targetRate;   // input samples per output sample
    this.size = o.chunkSamples;
    this.out = new Int16Array(this.size);
    this.n = 0;
    this.acc = 0; this.cnt = 0; this.t = 0;  // downsampling state
    this.prev = 0; this.pos = 0;             // upsampling state
    this.sq = 0; this.sqN = 0; this.levelEvery = Math.round(sampleRate * 0.05);
    this.done = false;
    this.port.onmessage = (e) => {
      if (e.data === "flush") {
        const rest = this.out.slice(0, this.n);
        this.n = 0;
        this.done = true;
        this.port.postMessage({ type: "flushed", buffer: rest.buffer }, [rest.buffer]);
      }
    };
  }
  emit(v) {
    const s = Math.max(-1, Math.min(1, v));
    this.out[this.n++] = s < 0 ? Math.round(s * 32768) : Math.round(s * 32767);
    if (this.n === this.size) {
      const full = this.out;
      this.out = new Int16Array(this.size);
      this.n = 0;
      this.port.postMessage({ type: "chunk", buffer: full.buffer }, [full.buffer]);
    }
  }
  process(inputs) {
    if (this.done) return false;
    const input = inputs[0];
    if (!input || input.length === 0) return true;
    const frames = input[0].length;
    const chans = input.length;
    for (let i = 0; i < frames; i++) {
      let x = 0;
      for (let c = 0; c < chans; c++) x += input[c][i];
      x /= chans;
      this.sq += x * x;
      if (++this.sqN >= this.levelEvery) {
        this.port.postMessage({ type: "level", rms: Math.sqrt(this.sq / this.sqN) });
        this.sq = 0; this.sqN = 0;
      }
      if (this.step >= 1) {
        this.acc += x; this.cnt += 1; this.t += 1;
        if (this.t >= this.step) {
          this.emit(this.acc / this.cnt);
          this.acc = 0; this.cnt = 0; this.t -= this.step;
        }
      } else {
        while (this.pos <= 1) {
          this.emit(this.prev + (x - this.prev) * this.pos);
          this.pos += this.step;
        }
        this.pos -= 1;
        this.prev = x;
      }
    }
    return true;
  }
}
registerProcessor("s2i-pcm-chunker", S2IPcmChunker);
`;

let workletUrl = null;
function getWorkletUrl() {
  if (!workletUrl) {
    workletUrl = URL.createObjectURL(new Blob([WORKLET_SOURCE], { type: "text/javascript" }));
  }
  return workletUrl;
}

function errorCodeFor(err) {
  const name = (err && err.name) || "";
  if (name === "NotAllowedError" || name === "SecurityError" || name === "PermissionDeniedError") {
    return "permission-denied";
  }
  return "no-microphone"; // NotFoundError, NotReadableError, OverconstrainedError, AbortError, ...
}

function withTimeout(promise, ms, what) {
  let timer;
  return Promise.race([
    promise,
    new Promise((_, reject) => {
      timer = setTimeout(() => reject(new Error(`${what} did not finish within ${ms} ms`)), ms);
    }),
  ]).finally(() => clearTimeout(timer));
}

class Capture {
  constructor(model) {
    this.model = model;
    this.views = new Set();
    this.state = "idle"; // idle | starting | recording | stopping
    this.localError = "";
    this.notice = ""; // why the last take ended by itself
    this.level = 0;
    this.startedAt = 0;
    this.seq = 0;
    this.stream = null;
    this.ctx = null;
    this.node = null;
    this.source = null;
    this.ticker = null;
    this.onRecording = () => this.syncWithModel();
    model.on("change:recording", this.onRecording);
    this.onVisibility = () => this.checkAudioRuns();
    document.addEventListener("visibilitychange", this.onVisibility);
  }

  destroy() {
    this.model.off("change:recording", this.onRecording);
    document.removeEventListener("visibilitychange", this.onVisibility);
    this.release();
  }

  // The browser stopped the audio under a running take: end the take with what it has.
  checkAudioRuns() {
    if (this.state !== "recording" || !this.ctx || this.ctx.state === "running") return;
    this.notice = SUSPENDED_NOTICE;
    this.stop("suspended");
  }

  setModel(values) {
    for (const [k, v] of Object.entries(values)) this.model.set(k, v);
    this.model.save_changes();
  }

  redraw() {
    for (const view of this.views) view.update();
  }

  syncWithModel() {
    const want = !!this.model.get("recording");
    if (want && this.state === "idle") this.start();
    else if (!want && (this.state === "recording" || this.state === "starting")) this.stop();
  }

  fail(code, detail) {
    const message = MESSAGES[code] || "The recorder failed in the browser.";
    this.localError = message;
    this.release();
    this.state = "idle";
    this.model.send({ kind: "error", code, message, detail: String(detail || "") });
    this.setModel({ recording: false, status: "error" });
    this.redraw();
  }

  async start() {
    this.state = "starting";
    this.localError = "";
    this.notice = "";
    this.seq = 0;
    this.setModel({ recording: true, status: "starting", error: "" });
    this.redraw();
    if (!window.isSecureContext || !navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) {
      this.fail("insecure-context", `origin ${window.location.origin}`);
      return;
    }
    const constraints = Object.assign({ channelCount: 1 }, this.model.get("constraints") || {});
    try {
      this.stream = await navigator.mediaDevices.getUserMedia({ audio: constraints, video: false });
    } catch (err) {
      this.fail(errorCodeFor(err), `${err && err.name}: ${err && err.message}`);
      return;
    }
    if (this.state !== "starting") {
      this.release(); // stopped while the permission prompt was open
      return;
    }
    try {
      this.ctx = new AudioContext();
      this.ctx.onstatechange = () => this.checkAudioRuns(); // "suspended", "interrupted"
      if (this.ctx.state !== "running") await withTimeout(this.ctx.resume(), RESUME_TIMEOUT_MS, "resume");
      await withTimeout(this.ctx.audioWorklet.addModule(getWorkletUrl()), 5000, "addModule");
      const chunkMs = this.model.get("chunk_ms") || 100;
      const targetRate = this.model.get("sample_rate") || 16000;
      this.node = new AudioWorkletNode(this.ctx, "s2i-pcm-chunker", {
        numberOfInputs: 1,
        numberOfOutputs: 1,
        outputChannelCount: [1],
        processorOptions: { targetRate, chunkSamples: Math.round((targetRate * chunkMs) / 1000) },
      });
      this.node.port.onmessage = (e) => this.onWorklet(e.data);
      this.source = this.ctx.createMediaStreamSource(this.stream);
      this.source.connect(this.node);
      this.node.connect(this.ctx.destination); // the node writes silence; this keeps it pulled
    } catch (err) {
      this.fail("audio-context", `${err && err.name}: ${err && err.message}`);
      return;
    }
    if (this.state !== "starting") {
      this.release();
      return;
    }
    this.state = "recording";
    this.startedAt = performance.now();
    this.setModel({ status: "recording" });
    this.ticker = setInterval(() => this.tick(), 100);
    this.redraw();
  }

  onWorklet(data) {
    if (data.type === "level") {
      this.level = data.rms;
    } else if (data.type === "chunk") {
      this.sendChunk(data.buffer);
    } else if (data.type === "flushed" && this.flushed) {
      this.flushed(data.buffer);
    }
  }

  sendChunk(buffer) {
    if (!buffer || buffer.byteLength === 0) return;
    this.model.send({ kind: "chunk", seq: this.seq++ }, undefined, [buffer]);
  }

  tick() {
    const maxS = this.model.get("max_seconds") || 0;
    if (this.state === "recording" && maxS > 0 && this.elapsedS() >= maxS) {
      this.setModel({ recording: false }); // change:recording -> stop()
      this.stop();
    }
    this.redraw();
  }

  elapsedS() {
    return this.state === "recording" || this.state === "stopping"
      ? (performance.now() - this.startedAt) / 1000
      : 0;
  }

  // `reason` is "" for Stop (a click, the kernel, max_seconds) and "suspended" when the browser
  // stopped the audio; the kernel gets it with the "stopped" message.
  async stop(reason = "") {
    if (this.state === "starting") {
      this.state = "idle"; // start() notices and releases
      this.setModel({ status: "idle" });
      this.redraw();
      return;
    }
    if (this.state !== "recording") return;
    this.state = "stopping";
    const duration = this.elapsedS();
    if (this.node) {
      const rest = await new Promise((resolve) => {
        const timer = setTimeout(() => resolve(null), FLUSH_TIMEOUT_MS);
        this.flushed = (buffer) => {
          clearTimeout(timer);
          resolve(buffer);
        };
        this.node.port.postMessage("flush");
      });
      this.flushed = null;
      if (rest) this.sendChunk(rest);
    }
    const chunkCount = this.seq;
    this.release();
    this.state = "idle";
    this.model.send({ kind: "stopped", chunk_count: chunkCount, duration_s: duration, reason });
    const values = { status: "idle" };
    if (this.model.get("recording")) values.recording = false;
    this.setModel(values);
    this.redraw();
  }

  release() {
    if (this.ticker) clearInterval(this.ticker);
    this.ticker = null;
    try {
      if (this.source) this.source.disconnect();
      if (this.node) {
        this.node.port.onmessage = null;
        this.node.disconnect();
      }
      if (this.ctx) this.ctx.onstatechange = null; // closing it is no news
    } catch (_) {
      /* already disconnected */
    }
    this.source = null;
    this.node = null;
    if (this.stream) for (const track of this.stream.getTracks()) track.stop();
    this.stream = null;
    if (this.ctx && this.ctx.state !== "closed") this.ctx.close().catch(() => {});
    this.ctx = null;
    this.level = 0;
  }
}

function formatTime(s) {
  const m = Math.floor(s / 60);
  const rest = (s - m * 60).toFixed(1).padStart(4, "0");
  return `${m}:${rest}`;
}

class View {
  constructor(capture, el) {
    this.capture = capture;
    this.root = document.createElement("div");
    this.root.className = "s2i-recorder";
    this.button = document.createElement("button");
    this.button.className = "s2i-recorder-button";
    this.button.type = "button";
    this.time = document.createElement("span");
    this.time.className = "s2i-recorder-time";
    const meter = document.createElement("div");
    meter.className = "s2i-recorder-meter";
    this.bar = document.createElement("div");
    this.bar.className = "s2i-recorder-level";
    meter.appendChild(this.bar);
    this.message = document.createElement("div");
    this.message.className = "s2i-recorder-error";
    this.message.setAttribute("role", "alert");
    const row = document.createElement("div");
    row.className = "s2i-recorder-row";
    row.append(this.button, this.time, meter);
    this.root.append(row, this.message);
    el.appendChild(this.root);
    this.button.addEventListener("click", () => this.onClick());
    this.onChange = () => this.update();
    // Only a rendered view answers the kernel's ping: "displayed but never drawn" is the
    // failure the kernel is looking for.
    this.onCustom = (msg) => {
      if (msg && msg.kind === "ping") capture.model.send({ kind: "hello" });
    };
    capture.model.on("change:error", this.onChange);
    capture.model.on("change:status", this.onChange);
    capture.model.on("msg:custom", this.onCustom);
  }

  onClick() {
    const c = this.capture;
    if (c.state === "idle") c.start();
    else c.stop();
  }

  update() {
    const c = this.capture;
    const active = c.state === "recording" || c.state === "starting";
    this.root.dataset.state = c.state;
    this.button.textContent = active ? "■ Stop" : c.state === "stopping" ? "… Stopping" : "● Record";
    this.button.disabled = c.state === "stopping";
    this.button.setAttribute("aria-pressed", String(active));
    this.time.textContent = formatTime(c.elapsedS());
    const db = c.level > 0 ? 20 * Math.log10(c.level) : LEVEL_FLOOR_DB;
    const pct = Math.max(0, Math.min(100, ((db - LEVEL_FLOOR_DB) / -LEVEL_FLOOR_DB) * 100));
    this.bar.style.width = `${active ? pct : 0}%`;
    const error = c.model.get("error") || c.localError || c.notice;
    this.message.textContent = error;
    this.message.hidden = !error;
  }

  destroy() {
    this.capture.model.off("change:error", this.onChange);
    this.capture.model.off("change:status", this.onChange);
    this.capture.model.off("msg:custom", this.onCustom);
    this.root.remove();
  }
}

// anywidget hands each hook its own proxy of the model, so captures are keyed by an id the
// kernel gives every Recorder (`_instance_id`).
const captures = new Map();

function captureFor(model) {
  const key = model.get("_instance_id");
  let capture = captures.get(key);
  if (!capture) {
    capture = new Capture(model);
    captures.set(key, capture);
  }
  return capture;
}

export default {
  initialize({ model }) {
    const capture = captureFor(model);
    return () => {
      capture.destroy();
      captures.delete(model.get("_instance_id"));
    };
  },
  render({ model, el }) {
    const capture = captureFor(model);
    const view = new View(capture, el);
    capture.views.add(view);
    view.update();
    model.send({ kind: "hello" });
    if (model.get("recording") && capture.state === "idle") capture.syncWithModel();
    return () => {
      view.destroy();
      capture.views.delete(view);
      if (capture.views.size === 0) {
        // The last view is gone: let go of the microphone and the audio context.
        capture.state = "idle";
        capture.release();
      }
    };
  },
};
