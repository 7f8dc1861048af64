// net/socket_reserve.hpp: the reactor's per-socket states made ahead of the sockets, many at once.
#include <malloc.h>
#include <unistd.h>

#include <boost/asio/io_context.hpp>
#include <boost/asio/posix/stream_descriptor.hpp>
#include <catch.hpp>
#include <cstddef>
#include <vector>

#include "pgsluice/net/socket_reserve.hpp"

#if defined(__SANITIZE_ADDRESS__)
// ASan's allocator (its header is not installed here): glibc's mallinfo2 does not see its heap.
extern "C" std::size_t __sanitizer_get_current_allocated_bytes();
#endif

namespace asio = boost::asio;
using pgsluice::net::SocketStateReserve;

namespace {

std::size_t allocated_bytes() {
#if defined(__SANITIZE_ADDRESS__)
  return __sanitizer_get_current_allocated_bytes();
#else
  return mallinfo2().uordblks;
#endif
}

// Heap bytes taken by giving `count` descriptors (dups of one pipe end, so epoll registers each) to
// the reactor of `io`; the descriptors are closed again.
std::size_t bytes_to_open(asio::io_context& io, int fd, std::size_t count) {
  std::vector<asio::posix::stream_descriptor> open;
  open.reserve(count);
  for (std::size_t i = 0; i < count; ++i)
    open.emplace_back(io);
  const std::size_t before = allocated_bytes();
  for (auto& each : open)
    each.assign(::dup(fd));
  const std::size_t after = allocated_bytes();
  return after > before ? after - before : 0;
}

}  // namespace

TEST_CASE("the socket reserve makes the reactor's states before the sockets need them", "[net]") {
  int pipe_fds[2];
  REQUIRE(::pipe(pipe_fds) == 0);
  constexpr std::size_t kSockets = 400;

  // Without a reserve each socket's first registration allocates its state (168 bytes in Asio 1.81).
  asio::io_context plain(1);
  CHECK(bytes_to_open(plain, pipe_fds[0], kSockets) >= kSockets * 100);

  asio::io_context io(1);
  SocketStateReserve reserve(io);
  reserve.ensure(0);
  CHECK(reserve.reserved() == SocketStateReserve::kFirst);
  CHECK(bytes_to_open(io, pipe_fds[0], kSockets) < kSockets * 8);  // from the reserve: nothing new
  // Sockets closed, their states free again: a second round takes nothing new either.
  CHECK(bytes_to_open(io, pipe_fds[0], kSockets) < kSockets * 8);

  // Below the margin nothing happens; past it the reserve grows by half at least, or to the margin.
  reserve.ensure(SocketStateReserve::kFirst - SocketStateReserve::kMargin);
  CHECK(reserve.reserved() == SocketStateReserve::kFirst);
  reserve.ensure(SocketStateReserve::kFirst - SocketStateReserve::kMargin + 1);
  CHECK(reserve.reserved() == SocketStateReserve::kFirst * 3 / 2);
  reserve.ensure(5000);
  CHECK(reserve.reserved() == 5000 + SocketStateReserve::kMargin);

  ::close(pipe_fds[0]);
  ::close(pipe_fds[1]);
}
