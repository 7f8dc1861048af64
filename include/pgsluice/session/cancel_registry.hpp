#pragma once
// pgsluice's own BackendKeyData keys (random, CSPRNG) and the sessions they belong to, so that a
// CancelRequest arriving on a new connection reaches the server connection that session holds.
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

 private:
  mutable std::mutex mutex_;
  // By process id << 32 | secret key (random, so the identity hash spreads them).
  std::unordered_map<std::uint64_t, std::weak_ptr<ClientSession>> sessions_;
};

}  // namespace pgsluice::session
