#include "pgsluice/session/cancel_registry.hpp"

#include <atomic>
#include <cstring>

#include "pgsluice/protocol/scram.hpp"

namespace pgsluice::session {

namespace {
std::uint64_t id_of(std::uint32_t process_id, std::uint32_t secret_key) {
  return (std::uint64_t{process_id} << 32) | secret_key;
}
}  // namespace

CancelRegistry::Key CancelRegistry::add(const std::shared_ptr<ClientSession>& session) {
  // The calling thread's shard, the same for all its sessions (threads take them in turn).
  static std::atomic<std::size_t> next_shard{0};
  thread_local const std::size_t own_shard = next_shard.fetch_add(1, std::memory_order_relaxed) % kShards;
  auto& shard = shards_[own_shard];
  for (;;) {
    std::uint8_t random[8];
    protocol::scram::random_fill(random, sizeof random);
    Key key;
    std::memcpy(&key.process_id, random, 4);
    std::memcpy(&key.secret_key, random + 4, 4);
    // Clients print the process id as a signed pid; its low bits name the shard (27 of its bits and
    // the 32 of the secret stay random).
    key.process_id = (key.process_id & 0x7fffffff & ~std::uint32_t{kShards - 1}) | static_cast<std::uint32_t>(own_shard);
    std::lock_guard lock(shard.mutex);
    auto [it, inserted] = shard.sessions.try_emplace(id_of(key.process_id, key.secret_key), session);
    if (inserted) return key;
  }
}

void CancelRegistry::remove(Key key) {
  auto& shard = shards_[shard_of(key)];
  std::lock_guard lock(shard.mutex);
  shard.sessions.erase(id_of(key.process_id, key.secret_key));
}

std::shared_ptr<ClientSession> CancelRegistry::find(Key key) const {
  const auto& shard = shards_[shard_of(key)];
  std::lock_guard lock(shard.mutex);
  auto it = shard.sessions.find(id_of(key.process_id, key.secret_key));
  return it == shard.sessions.end() ? nullptr : it->second.lock();
}

std::vector<std::shared_ptr<ClientSession>> CancelRegistry::sessions() const {
  std::vector<std::shared_ptr<ClientSession>> out;
  for (const auto& shard : shards_) {
    std::lock_guard lock(shard.mutex);
    out.reserve(out.size() + shard.sessions.size());
    for (const auto& [key, session] : shard.sessions) {
      if (auto live = session.lock()) out.push_back(std::move(live));
    }
  }
  return out;
}

std::size_t CancelRegistry::size() const {
  std::size_t total = 0;
  for (const auto& shard : shards_) {
    std::lock_guard lock(shard.mutex);
    total += shard.sessions.size();
  }
  return total;
}

}  // namespace pgsluice::session
