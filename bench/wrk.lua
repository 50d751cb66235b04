-- The load of one run of bench/run.py, for wrk:
--
--   wrk -s bench/wrk.lua http://127.0.0.1:PORT -- <scenario> <users.lua> <client>
--
-- <users.lua> returns { {token = "...", tasks = {id, ...}}, ... }: every
-- bench user with their session token and the ids of their own tasks on that
-- server. <client> is whose frontend's requests to send: "todo-api" (the next
-- frontend, sent to todo-api and to the ceiling app) or "reference" (the
-- frontend of the reference backend). Both frontends send
-- `Content-Type: application/json` and `Authorization: Bearer <token>` on
-- every request; their bodies differ as the FORMS below say.
-- Each wrk thread walks through all users in turn, from a random starting
-- user, so the requests of every connection are spread across all sessions;
-- requests on one task pick one of that user's own tasks at random.
-- done() prints one line, "WRK_RESULT key=value ...", that run.py parses.

local threads = {}
local thread_count = 0

function setup(thread)
   thread_count = thread_count + 1
   thread:set("thread_number", thread_count)
   table.insert(threads, thread)
end

local users, next_user, build_request
local sequence = 0
non2xx = 0 -- global, so that done() can read it from each thread

local function next_session()
   local user = users[next_user]
   next_user = next_user % #users + 1
   return user
end

local function own_task(user)
   return user.tasks[math.random(#user.tasks)]
end

local function headers(user)
   return { ["Authorization"] = "Bearer " .. user.token, ["Content-Type"] = "application/json" }
end

local PRIORITIES = { "low", "medium", "high" }

-- The bodies each frontend sends (JSON.stringify: no spaces, fields in this order), with a title and a priority.
local FORMS = {
   -- The next frontend (app/dashboard/page.tsx handleSubmit): the task modal's fields, a new task with tags = [];
   -- an edit sends the same fields back, the description pre-filled with "" when the task has none.
   ["todo-api"] = {
      create = '{"title":"%s","description":"","priority":"%s","due_date":null,"is_recurring":false,'
         .. '"recurrence_pattern":null,"tags":[]}',
      update = '{"title":"%s","description":"","priority":"%s","due_date":null,"is_recurring":false,'
         .. '"recurrence_pattern":null}',
   },
   -- The reference's frontend: a new task is {title, description, priority, tags: []}; an edit sends the fields
   -- of the task the reference has.
   reference = {
      create = '{"title":"%s","description":"","priority":"%s","tags":[]}',
      update = '{"title":"%s","description":"","priority":"%s"}',
   },
}
local form

local scenarios = {}

function scenarios.health()
   return wrk.format("GET", "/health")
end

function scenarios.list()
   return wrk.format("GET", "/api/tasks", headers(next_session()))
end

function scenarios.get()
   local user = next_session()
   return wrk.format("GET", "/api/tasks/" .. own_task(user), headers(user))
end

function scenarios.create()
   sequence = sequence + 1
   local title = string.format("Load task %d-%d", thread_number, sequence)
   local body = string.format(form.create, title, PRIORITIES[sequence % 3 + 1])
   return wrk.format("POST", "/api/tasks", headers(next_session()), body)
end

function scenarios.update()
   sequence = sequence + 1
   local user = next_session()
   local title = string.format("Renamed %d-%d", thread_number, sequence)
   local body = string.format(form.update, title, PRIORITIES[sequence % 3 + 1])
   return wrk.format("PUT", "/api/tasks/" .. own_task(user), headers(user), body)
end

function scenarios.toggle()
   local user = next_session()
   return wrk.format("PATCH", "/api/tasks/" .. own_task(user) .. "/complete", headers(user))
end

-- 70% list, 10% create, 10% toggle, 10% update.
function scenarios.mix()
   local roll = math.random(100)
   if roll <= 70 then
      return scenarios.list()
   elseif roll <= 80 then
      return scenarios.create()
   elseif roll <= 90 then
      return scenarios.toggle()
   end
   return scenarios.update()
end

function init(args)
   build_request = scenarios[args[1]]
   if build_request == nil then
      error("unknown scenario: " .. tostring(args[1]))
   end
   users = dofile(args[2])
   form = FORMS[args[3]]
   if form == nil then
      error("unknown client: " .. tostring(args[3]))
   end
   math.randomseed(os.time() * 1000 + thread_number)
   next_user = math.random(#users)
end

function request()
   return build_request()
end

function response(status, headers, body)
   if status < 200 or status > 299 then
      non2xx = non2xx + 1
   end
end

function done(summary, latency, requests)
   local failed = 0
   for _, thread in ipairs(threads) do
      failed = failed + thread:get("non2xx")
   end
   local errors = summary.errors
   io.write(string.format(
      "WRK_RESULT requests=%d duration_us=%d p50_us=%d p90_us=%d p99_us=%d max_us=%d"
         .. " non2xx=%d connect=%d read=%d write=%d timeout=%d\n",
      summary.requests, summary.duration, latency:percentile(50), latency:percentile(90),
      latency:percentile(99), latency.max, failed, errors.connect, errors.read, errors.write,
      errors.timeout))
end
