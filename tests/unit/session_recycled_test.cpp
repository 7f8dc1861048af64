// session/recycled.hpp: the per-thread blocks sessions and statement trackers are made from.
#include <catch.hpp>

#include <memory>
#include <stdexcept>
#include <thread>

#include "pgsluice/session/recycled.hpp"

namespace session = pgsluice::session;

namespace {

struct Large {  // over glibc's tcache limit, like a session
  explicit Large(int v) : value(v) {}
  int value;
  char bytes[1500] = {};
};

struct Throws {
  Throws() { throw std::runtime_error("no"); }
  char bytes[1500] = {};
};

}  // namespace

TEST_CASE("recycled blocks are reused on the thread that freed them, and trimmed on request", "[session]") {
  auto first = session::make_recycled<Large>(1);
  const void* at = first.get();
  first.reset();
  auto second = session::make_recycled<Large>(2);
  CHECK(second.get() == at);  // the freed block, not a new one
  CHECK(second->value == 2);

  // allocate_shared through the allocator: the control block and the object in one recycled block.
  auto shared = std::allocate_shared<Large>(session::Recycled<Large>{}, 3);
  const void* shared_at = shared.get();
  shared.reset();
  auto again = std::allocate_shared<Large>(session::Recycled<Large>{}, 4);
  CHECK(static_cast<const void*>(again.get()) == shared_at);

  // Another thread has its own blocks: it does not take this thread's.
  second.reset();
  const void* elsewhere = nullptr;
  std::thread([&] { elsewhere = session::make_recycled<Large>(5).get(); }).join();
  CHECK(elsewhere != at);

  // A constructor that throws gives its block back; trimming frees what is kept (ASan: no leak).
  CHECK_THROWS(session::make_recycled<Throws>());
  session::trim_recycled(0);
  auto after = session::make_recycled<Large>(6);
  CHECK(after->value == 6);
}
