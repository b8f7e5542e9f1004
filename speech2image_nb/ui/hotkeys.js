// Space starts and stops recording while the panel (or anything in it but a text field) has focus.
function isTyping(target) {
  if (!target) return false;
  const tag = (target.tagName || "").toLowerCase();
  return tag === "input" || tag === "textarea" || tag === "select" || target.isContentEditable;
}

export default {
  render({ model, el }) {
    el.classList.add("s2i-hotkeys");
    let root = null;
    let timer = null;
    let tries = 0;
    const onKey = (event) => {
      if (event.code !== "Space" && event.key !== " ") return;
      if (event.repeat || event.ctrlKey || event.metaKey || event.altKey || isTyping(event.target)) return;
      event.preventDefault();
      event.stopPropagation();
      model.send({ kind: "toggle-recording" });
    };
    const attach = () => {
      root = el.closest(".s2i-panel");
      if (!root) {
        if (tries++ < 100) timer = setTimeout(attach, 100);
        return;
      }
      if (!root.hasAttribute("tabindex")) root.setAttribute("tabindex", "0");
      // keep notebook shortcuts (command mode) from eating the key while the panel has focus
      root.setAttribute("data-lm-suppress-shortcuts", "true");
      root.addEventListener("keydown", onKey);
    };
    timer = setTimeout(attach, 0);
    return () => {
      clearTimeout(timer);
      if (root) root.removeEventListener("keydown", onKey);
    };
  },
};
