"""A real browser on another origin calls the server the way the DALL-E Playground web UI does."""

from __future__ import annotations

import pytest

from .image_server_utils import StandIn, running_server, send

# the Playground's calls (interface/src/backend_api.js): a GET with the tunnel header, then a POST
# whose body is a JSON string (so the browser sends text/plain), then <img src="data:image/...">
PAGE = b"""<!doctype html><html><body><script>
async function playground(base) {
  const health = await fetch(base, {headers: {'Bypass-Tunnel-Reminder': 'go'}});
  const answer = await fetch(base + '/generate', {
    method: 'POST', headers: {'Bypass-Tunnel-Reminder': 'go'},
    body: JSON.stringify({text: 'a red fox sitting in the snow', num_images: 2}),
  });
  const json = await answer.json();
  const sizes = [];
  for (const data of json.generatedImgs) {
    const img = new Image();
    img.src = `data:image/${json.generatedImgsFormat};base64,${data}`;
    await img.decode();
    sizes.push([img.naturalWidth, img.naturalHeight]);
  }
  return {health: health.status, status: answer.status, format: json.generatedImgsFormat, sizes};
}
</script></body></html>"""


@pytest.mark.browser
def test_playground_style_calls_from_another_origin_in_chromium():
    """Chromium on another origin: preflighted GET / and POST /generate succeed, images decode."""
    from playwright.sync_api import sync_playwright

    page_routes = {("GET", "/"): lambda h, b: send(h, 200, PAGE, "text/html")}
    with (
        running_server() as server,
        running_server(cors_origins=("https://elsewhere.example",)) as closed,
        StandIn(page_routes) as page,
        sync_playwright() as playwright,
    ):
        browser = playwright.chromium.launch(executable_path="/usr/bin/chromium", args=["--no-sandbox"])
        try:
            tab = browser.new_page()
            tab.goto(page.url + "/")
            result = tab.evaluate("base => playground(base)", server.url)
            refused = tab.evaluate("base => playground(base).then(() => 'allowed', e => e.name)", closed.url)
        finally:
            browser.close()
    assert result == {"health": 200, "status": 200, "format": "jpeg", "sizes": [[64, 64], [64, 64]]}
    assert refused == "TypeError"  # CORS really is what lets the first call through
