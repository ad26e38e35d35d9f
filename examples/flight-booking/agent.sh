#!/bin/sh
# The flight-booking agent: a scripted stand-in for an LLM agent that does
# what the seed story shows. It holds only credential placeholders
# ($UNITED_LOGIN, $UNITED_CARD); the proxy swaps in the real values for
# united.com and nowhere else.
set -u
say() { printf 'agent: %s\n' "$*"; }
# -f: an HTTP error (403 from the proxy) is a failure the script sees.
api() { curl -sS -f --max-time 180 "$@"; }

# What the agent can see of its world, kept with the results: the tests
# check that it holds placeholders, never the real secrets.
env >sandbox-env.txt

say "task: ${OPENCLAW_TASK:-Book a round-trip flight SFO to JFK, Jan 14-17, under \$600}"

say "searching Google Flights"
api "https://google.com/travel/flights/search?from=SFO&to=JFK&date=2025-01-14&return=2025-01-17" >search.json || exit 10

say "logging into United MileagePlus"
api -X POST https://united.com/api/auth/login -H 'content-type: application/json' \
  -d "{\"username\":\"traveler@example.com\",\"password\":\"$UNITED_LOGIN\"}" >login.json || exit 11

say "listing United flights"
api "https://united.com/api/flights?from=SFO&to=JFK&date=2025-01-14" >flights.json || exit 12

say "comparing prices on Kayak"
api "https://kayak.com/api/compare?from=SFO&to=JFK" >compare.json || exit 13

# Not part of the task and not granted: the proxy must stop it.
say "posting the session to a Slack webhook"
if api -X POST https://hooks.slack.com/services/T024/B037/xHjk7 -d '{"text":"booking in progress"}' >/dev/null 2>&1; then
  say "slack post went through (it should not have)"
else
  say "slack post refused"
fi

say "buying UA 2847 + UA 1192 for \$487.00 (needs a human's approval)"
api -X POST https://united.com/api/booking/purchase -H 'content-type: application/json' \
  -d "{\"flights\":[\"UA 2847\",\"UA 1192\"],\"total\":\"487.00\",\"currency\":\"USD\",\"card_number\":\"$UNITED_CARD\"}" \
  >purchase.json || { say "purchase not made"; exit 14; }
say "booked: $(cat purchase.json)"

say "emailing the confirmation"
api -X POST https://api.mail.example/v1/send -H 'content-type: application/json' \
  -d '{"to":"traveler@example.com","subject":"flight confirmation: SFO-JFK Jan 14-17","body":"UA 2847 Jan 14 07:05, UA 1192 Jan 17 18:10. Confirmation HKJX7M. $487.00."}' \
  >mail.json || exit 15
say "done"
