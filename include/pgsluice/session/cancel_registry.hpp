#pragma once
// pgsluice's own BackendKeyData keys (random, CSPRNG) and the sessions they belong to, so that a
// CancelRequest arriving on a new connection reaches the server connection that session holds.
#include <array>
#include <cstddef>
#include <cstdint>
#include <unordered_map>
#include <memory>
#include <mutex>
#include <utility>
#include <vector>

namespace pgsluice::session {

class ClientSession;

class CancelRegistry {
 public:
  struct Key {
    std::uint32_t process_id = 0;
    std::uint32_t secret_key = 0;
  };
  // Draws a fresh key not in use and registers the session under it.
  Key add(const std::shared_ptr<ClientSession>& session);
  void remove(Key key);
  // The session the key belongs to; a wrong key finds nothing (and is ignored, like Postgres).
  std::shared_ptr<ClientSession> find(Key key) const;
  std::size_t size() const;
  // Every live session (for shutdown).
  std::vector<std::shared_ptr<ClientSession>> sessions() const;

  // Keys live in shards, each with its lock on its own cache line; a thread registers its sessions
  // in a shard of its own (the low bits of the process id name it), so workers adding and removing
  // keys in a login storm neither contend for one lock nor pass its cache line between them.
  static constexpr std::size_t kShards = 16;  // a power of two: the low bits of a process id
  static_assert((kShards & (kShards - 1)) == 0);

 private:
  struct alignas(64) Shard {
    mutable std::mutex mutex;
    // By process id << 32 | secret key (random, so the identity hash spreads them).
    std::unordered_map<std::uint64_t, std::weak_ptr<ClientSession>> sessions;
  };
  static std::size_t shard_of(Key key) { return key.process_id % kShards; }
  std::array<Shard, kShards> shards_;
};

}  // namespace pgsluice::session
