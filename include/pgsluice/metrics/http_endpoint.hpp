#pragma once
// The HTTP side of observability (DESIGN §6): /metrics, /healthz, /readyz on metrics.listen. A small
// server on the daemon's own event loop (Boost.Beast, kept out of this header): each scraper has a
// coroutine of its own whose reads and writes are asynchronous and bounded in time and size, so a
// slow or stuck scraper costs one idle socket, never a stalled worker.
#include <functional>
#include <string>
#include <string_view>

#include "pgsluice/net/io.hpp"

namespace pgsluice::metrics {

struct HttpResponse {
  unsigned status = 200;
  std::string content_type = "text/plain; charset=utf-8";
  std::string body;
};

// Answers one GET (or HEAD) of `path` (the target without its query string). Runs on the
// acceptor's executor.
using HttpHandler = std::function<HttpResponse(std::string_view path)>;

// Serves connections from `acceptor` until it is closed.
net::awaitable<void> serve_http(net::tcp::acceptor& acceptor, HttpHandler handler);

}  // namespace pgsluice::metrics
