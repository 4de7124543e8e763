//! The Lua scripts the cluster runs in Redis: each is one round trip, and
//! atomic where a read decides a write.

/// Deletes a presence key only if it is still this session's.
pub(super) const WITHDRAW: &str = r"
local v = redis.call('GET', KEYS[1])
if v and cjson.decode(v)['session_key'] == ARGV[1] then
  redis.call('DEL', KEYS[1])
  for i = 2, #ARGV do redis.call('SREM', ARGV[i], cjson.decode(v)['agent_id']) end
  return 1
end
return 0
";

/// An agent's presence, if its replica is alive: one round trip.
pub(super) const LOOKUP: &str = r"
local v = redis.call('GET', KEYS[1])
if not v then return false end
local ok, p = pcall(cjson.decode, v)
if not ok or type(p['replica']) ~= 'string' then return false end
if redis.call('EXISTS', ARGV[1] .. p['replica']) == 1 then return v end
return false
";

/// [`LOOKUP`], then, if the agent is on another live replica and the
/// caller may reach it, the instruction published on that replica's
/// channel, in the same round trip. KEYS[1]: the presence key; ARGV: the
/// replica key prefix, this replica's name, the channel prefix, the
/// message, then `1` and the groups the caller's key is scoped to, if it
/// is. Returns the presence and the channel's subscriber count (-1: the
/// agent is in none of those groups, nothing published), or false (not
/// present, its replica dead, or this replica).
pub(super) const ROUTE: &str = r"
local v = redis.call('GET', KEYS[1])
if not v then return false end
local ok, p = pcall(cjson.decode, v)
if not ok or type(p['replica']) ~= 'string' or p['replica'] == ARGV[2] then return false end
if redis.call('EXISTS', ARGV[1] .. p['replica']) ~= 1 then return false end
if ARGV[5] == '1' then
  local allowed = false
  if type(p['groups']) == 'table' then
    for _, g in ipairs(p['groups']) do
      for i = 6, #ARGV do
        if g == ARGV[i] then allowed = true end
      end
    end
  end
  if not allowed then return {v, -1} end
end
return {v, redis.call('PUBLISH', ARGV[3] .. p['replica'], ARGV[4])}
";
