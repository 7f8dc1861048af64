#include "pgsluice/net/socket_reserve.hpp"

#include <spdlog/spdlog.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <boost/asio/io_context.hpp>
#include <boost/asio/posix/stream_descriptor.hpp>
#include <new>
#include <vector>

namespace pgsluice::net {

SocketStateReserve::~SocketStateReserve() {
  if (file_ >= 0) ::close(file_);
}

// Each descriptor assigned to Asio takes a state from the reactor's pool (a free one first, else a
// new one); holding `target - open` of them at once while `open` sockets hold theirs leaves the pool
// with `target` states, the new ones allocated one after the other. They all stand for one file:
// epoll_ctl refuses it with EPERM, which Asio accepts (no event ever registered), so releasing them
// is no system call and the file stays open.
void SocketStateReserve::grow(std::size_t open) {
  const std::size_t target = std::max({kFirst, open + kMargin, reserved_ + reserved_ / 2});
  if (file_ < 0) file_ = ::memfd_create("pgsluice-socket-reserve", MFD_CLOEXEC);
  if (file_ < 0) {
    failed_ = true;
    spdlog::debug("socket reserve: memfd_create failed: the reactor's states are made as sockets open");
    return;
  }
  // Released, never destroyed open: a descriptor's destructor would close the shared file (and
  // the next one whatever took its number).
  struct Held {
    std::vector<boost::asio::posix::stream_descriptor> descriptors;
    ~Held() {
      for (auto& each : descriptors)
        each.release();
    }
  };
  try {
    Held held;
    held.descriptors.reserve(target - open);
    boost::system::error_code ec;
    for (std::size_t i = open; i < target; ++i) {
      held.descriptors.emplace_back(io_);
      held.descriptors.back().assign(file_, ec);
      if (ec) {
        // Not the EPERM path (a kernel whose epoll takes the file): registered once, the next
        // assign of the same file fails; stop reserving rather than leave states Asio cannot take
        // back.
        held.descriptors.pop_back();
        failed_ = true;
        spdlog::debug("socket reserve: {}: the reactor's states are made as sockets open", ec.message());
        return;
      }
    }
  } catch (const std::bad_alloc&) {
    return;  // out of memory: the states are made as sockets open, and the next accept tries again
  }
  reserved_ = target;
}

}  // namespace pgsluice::net
