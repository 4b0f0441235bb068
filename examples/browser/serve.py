"""Serve the browser example and local exported models on 127.0.0.1 (no Hub, no CDN needed).

    python examples/browser/serve.py --model lite-whisper-tiny.en-fast [--port 8000]
    # then open the address it prints

Routes: `/` this folder (index.html, app.js); `/models/NAME/` each --model folder (a repo with onnx/, as
`lite-whisper export-onnx` writes it); and, when tests/js/node_modules holds them (`npm ci --ignore-scripts` in
tests/js), `/vendor/transformers/` (transformers.js' browser bundle) and `/vendor/ort/` (ONNX Runtime Web's wasm
files), which the printed address points the page at. Responses carry the cross-origin isolation headers that
let ONNX Runtime Web use several threads.
"""

import argparse
import http.server
import threading
from pathlib import Path

HERE = Path(__file__).resolve().parent
NODE_MODULES = HERE.parents[1] / "tests" / "js" / "node_modules"
VENDOR = {
    "/vendor/transformers/": NODE_MODULES / "@huggingface" / "transformers" / "dist",
    "/vendor/ort/": NODE_MODULES / "onnxruntime-web" / "dist",
}


class Handler(http.server.SimpleHTTPRequestHandler):
    routes: dict = {}  # URL prefix -> folder, longest first

    def translate_path(self, path):
        path = path.split("?", 1)[0].split("#", 1)[0]
        for prefix, folder in self.routes.items():
            if path.startswith(prefix):
                relative = Path(*[part for part in path[len(prefix):].split("/") if part not in ("", ".", "..")])
                return str(folder / relative)
        return str(HERE / "__not_found__")

    def end_headers(self):
        self.send_header("Cross-Origin-Opener-Policy", "same-origin")
        self.send_header("Cross-Origin-Embedder-Policy", "require-corp")
        self.send_header("Cache-Control", "no-store")
        super().end_headers()

    def log_message(self, *args):  # quiet: a model load is hundreds of range requests
        pass


def make_server(models, port: int = 0) -> http.server.ThreadingHTTPServer:
    """A server on 127.0.0.1:`port` (0: any free port) for the page, `models` (folders) and the vendored libraries."""
    routes = {f"/models/{Path(model).name}/": Path(model).resolve() for model in models}
    routes.update({prefix: folder for prefix, folder in VENDOR.items() if folder.is_dir()})
    routes["/"] = HERE
    handler = type("Routes", (Handler,), {"routes": dict(sorted(routes.items(), key=lambda item: -len(item[0])))})
    handler.extensions_map = dict(Handler.extensions_map, **{".mjs": "text/javascript", ".wasm": "application/wasm"})
    return http.server.ThreadingHTTPServer(("127.0.0.1", port), handler)


def page_url(server, model: str, dtype: str = "q8") -> str:
    """The page's address for a served local model, with the vendored libraries when they are served."""
    host, port = server.server_address[:2]
    url = f"http://{host}:{port}/index.html?local=1&model={Path(model).name}&dtype={dtype}"
    if all(folder.is_dir() for folder in VENDOR.values()):
        url += "&lib=/vendor/transformers/transformers.js&wasm=/vendor/ort/"
    return url


def serve_in_thread(models, port: int = 0):
    server = make_server(models, port)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", action="append", required=True, help="exported model folder (repeatable)")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--dtype", default="q8", choices=("q8", "fp32", "fp16"))
    args = parser.parse_args()
    server = make_server(args.model, args.port)
    for model in args.model:
        print(page_url(server, model, args.dtype))
    server.serve_forever()


if __name__ == "__main__":
    main()
