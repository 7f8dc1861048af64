// A minimal HTTP/1.1 server for the observability endpoints (see http_endpoint.hpp).
#include "pgsluice/metrics/http_endpoint.hpp"

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/core/tcp_stream.hpp>
#include <boost/beast/http/empty_body.hpp>
#include <boost/beast/http/parser.hpp>
#include <boost/beast/http/read.hpp>
#include <boost/beast/http/string_body.hpp>
#include <boost/beast/http/write.hpp>
#include <spdlog/spdlog.h>

#include <chrono>
#include <memory>

namespace pgsluice::metrics {

namespace asio = net::asio;
namespace beast = boost::beast;
namespace http = beast::http;

namespace {

constexpr auto kIoTimeout = std::chrono::seconds(10);  // per request and per response
constexpr std::uint32_t kMaxHeader = 8 * 1024;
constexpr int kMaxRequestsPerConnection = 10'000;

net::awaitable<void> serve_connection(net::tcp::socket socket, std::shared_ptr<HttpHandler> handler) {
  beast::tcp_stream stream(std::move(socket));
  beast::flat_buffer buffer(kMaxHeader);
  for (int served = 0; served < kMaxRequestsPerConnection; ++served) {
    http::request_parser<http::empty_body> parser;
    parser.header_limit(kMaxHeader);
    parser.body_limit(0);
    stream.expires_after(kIoTimeout);
    auto [read_ec, read_bytes] = co_await http::async_read(stream, buffer, parser, net::use_nothrow);
    if (read_ec) break;  // closed, timed out, or not HTTP: nothing to answer
    const auto& request = parser.get();
    http::response<http::string_body> response;
    response.version(request.version());
    response.keep_alive(request.keep_alive());
    response.set(http::field::server, "pgsluice");
    if (request.method() != http::verb::get && request.method() != http::verb::head) {
      response.result(http::status::method_not_allowed);
      response.set(http::field::allow, "GET, HEAD");
      response.set(http::field::content_type, "text/plain; charset=utf-8");
      response.body() = "only GET and HEAD\n";
    } else {
      auto target = std::string_view(request.target().data(), request.target().size());
      if (auto query = target.find('?'); query != std::string_view::npos) target = target.substr(0, query);
      auto answer = (*handler)(target);
      response.result(answer.status);
      response.set(http::field::content_type, answer.content_type);
      response.body() = std::move(answer.body);
    }
    response.prepare_payload();
    if (request.method() == http::verb::head) response.body().clear();
    stream.expires_after(kIoTimeout);
    auto [write_ec, written] = co_await http::async_write(stream, response, net::use_nothrow);
    if (write_ec || !response.keep_alive()) break;
  }
  net::error_code ignored;
  stream.socket().shutdown(net::tcp::socket::shutdown_both, ignored);
}

}  // namespace

net::awaitable<void> serve_http(net::tcp::acceptor& acceptor, HttpHandler handler) {
  auto shared = std::make_shared<HttpHandler>(std::move(handler));
  for (;;) {
    auto [ec, socket] = co_await acceptor.async_accept(net::use_nothrow);
    if (ec == asio::error::operation_aborted || !acceptor.is_open()) co_return;
    if (ec) {
      spdlog::warn("metrics endpoint: accept failed: {}", ec.message());
      asio::steady_timer pause(acceptor.get_executor(), std::chrono::milliseconds(50));
      co_await pause.async_wait(net::use_nothrow);
      continue;
    }
    asio::co_spawn(acceptor.get_executor(), serve_connection(std::move(socket), shared), asio::detached);
  }
}

}  // namespace pgsluice::metrics
