// The cancel-key registry: keys find their session until removed, a wrong key finds nothing, and
// each thread registers in a shard of its own named by the low bits of the process id.
#include <catch.hpp>

#include <memory>
#include <set>
#include <vector>
#include <thread>

#include "pgsluice/session/cancel_registry.hpp"

using pgsluice::session::CancelRegistry;
using pgsluice::session::ClientSession;

namespace {

// The registry only holds and returns sessions, never uses them: a pointer that shares an owner
// stands in for a real ClientSession (which needs a socket and a context).
struct Stand {
  std::shared_ptr<int> owner = std::make_shared<int>(0);
  std::shared_ptr<ClientSession> session{owner, reinterpret_cast<ClientSession*>(owner.get())};
};

}  // namespace

TEST_CASE("a cancel key finds its session until it is removed; a wrong key finds nothing") {
  CancelRegistry registry;
  Stand a, b;
  const auto key_a = registry.add(a.session);
  const auto key_b = registry.add(b.session);
  CHECK(registry.size() == 2);
  CHECK(registry.find(key_a) == a.session);
  CHECK(registry.find(key_b) == b.session);
  CHECK(registry.find({key_a.process_id, key_a.secret_key ^ 1}) == nullptr);
  CHECK(registry.find({key_a.process_id ^ static_cast<std::uint32_t>(CancelRegistry::kShards), key_a.secret_key}) == nullptr);
  CHECK(registry.sessions().size() == 2);
  registry.remove(key_a);
  CHECK(registry.find(key_a) == nullptr);
  CHECK(registry.find(key_b) == b.session);
  CHECK(registry.size() == 1);
}

TEST_CASE("cancel keys are positive process ids, a shard per thread, random otherwise") {
  CancelRegistry registry;
  std::vector<Stand> stands(200);
  std::set<std::uint32_t> process_ids;
  std::set<std::size_t> shards;
  for (auto& stand : stands) {
    const auto key = registry.add(stand.session);
    CHECK(key.process_id <= 0x7fffffffu);
    process_ids.insert(key.process_id);
    shards.insert(key.process_id % CancelRegistry::kShards);
  }
  CHECK(shards.size() == 1);             // one thread, one shard
  CHECK(process_ids.size() >= 195);      // 27 random bits: collisions are rare
  std::size_t other_shard = CancelRegistry::kShards;
  Stand other;
  std::thread([&] { other_shard = registry.add(other.session).process_id % CancelRegistry::kShards; }).join();
  CHECK(other_shard != *shards.begin());
  CHECK(registry.size() == 201);
  CHECK(registry.sessions().size() == 201);
}
