#pragma once
// Asio's reactor keeps one state object per socket (168 bytes) in a pool it never frees: a closed
// socket's state waits for the next socket, and the pool stays as large as the most sockets ever
// open at once. Made one at a time as clients arrive, each state lands between its client's session
// memory; after a 10,000-client burst had left, those 10,000 small live blocks pinned as many heap
// pages (VmRSS 36 MiB after against 12.7 at the start: the arenas were 98 % free, and malloc_trim
// can return no page that holds a live block). A worker therefore makes the states ahead of its
// clients, many at once and next to each other.
#include <cstddef>

namespace boost::asio {
class io_context;
}

namespace pgsluice::net {

class SocketStateReserve {
 public:
  // States made beyond the sockets open when the reserve grows, and the least it holds.
  static constexpr std::size_t kMargin = 512;
  static constexpr std::size_t kFirst = 1024;

  explicit SocketStateReserve(boost::asio::io_context& io) : io_(io) {}
  ~SocketStateReserve();
  SocketStateReserve(const SocketStateReserve&) = delete;
  SocketStateReserve& operator=(const SocketStateReserve&) = delete;

  // On the io_context's thread, while `open` of its sockets are open: makes sure the reactor holds
  // states for kMargin more (grows by half at least, so a burst costs few growths).
  void ensure(std::size_t open) {
    if (open + kMargin > reserved_ && !failed_) grow(open);
  }
  // States the reactor holds for this reserve's count (free or in use).
  std::size_t reserved() const { return reserved_; }

 private:
  void grow(std::size_t open);

  boost::asio::io_context& io_;
  int file_ = -1;  // a memfd: epoll refuses regular files, which Asio takes as a descriptor that never waits
  std::size_t reserved_ = 0;
  bool failed_ = false;
};

// Client sockets open on the calling thread: a session's, counted from its start to its end (a
// session stays on the worker that accepted it).
inline thread_local std::size_t t_open_client_sockets = 0;

}  // namespace pgsluice::net
