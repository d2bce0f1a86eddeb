"""Drives a running `pagoda serve` (stories260k) with the official `openai` client.

Checks: greedy completions equal the transformers goldens' text (plain and streamed, with
stream_options.include_usage); a chat call returns the same text as a completion of its rendered
template (rendered by the server's /tokenize); scoring a text with echo + logprobs + max_tokens 0
ranks the golden continuation first at each of its places; /metrics parses with prometheus_client's reference
parser and its counters match what this script sent.
Usage: openai_client.py BASE_URL GOLDEN_JSON MODEL_NAME
"""

import json
import sys
import urllib.request

from openai import OpenAI
from prometheus_client.parser import text_string_to_metric_families

base_url, golden_path, model = sys.argv[1], sys.argv[2], sys.argv[3]
client = OpenAI(base_url=f"{base_url}/v1", api_key="unused")
golden = json.load(open(golden_path))
sent_prompt_tokens = 0
sent_completion_tokens = 0
sent_requests = 0

assert [m.id for m in client.models.list().data] == [model]

for case in golden["cases"]:
    n = case["max_new_tokens"]
    r = client.completions.create(model=model, prompt=case["prompt"], max_tokens=n, temperature=0)
    assert r.choices[0].text == case["completion_text"], (r.choices[0].text, case["completion_text"])
    assert r.choices[0].finish_reason == "length"
    assert r.usage.prompt_tokens == len(case["prompt_token_ids"]), r.usage
    assert r.usage.completion_tokens == n
    sent_prompt_tokens += r.usage.prompt_tokens
    sent_completion_tokens += n
    sent_requests += 1

    stream = client.completions.create(
        model=model, prompt=case["prompt"], max_tokens=n, temperature=0, stream=True,
        stream_options={"include_usage": True},
    )
    text, usage, finish = "", None, None
    for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
            assert chunk.choices == []
        for c in chunk.choices:
            text += c.text
            finish = c.finish_reason or finish
    assert text == case["completion_text"], (text, case["completion_text"])
    assert finish == "length"
    assert usage is not None and usage.completion_tokens == n, usage
    sent_prompt_tokens += usage.prompt_tokens
    sent_completion_tokens += n
    sent_requests += 1

# Chat: the same text as a completion of the rendered template.
messages = [{"role": "user", "content": "Once upon a time"}]
chat = client.chat.completions.create(model=model, messages=messages, max_tokens=24, temperature=0)
req = urllib.request.Request(
    f"{base_url}/tokenize",
    data=json.dumps({"model": model, "messages": messages}).encode(),
    headers={"Content-Type": "application/json"},
)
rendered = json.load(urllib.request.urlopen(req))["tokens"]
completion = client.completions.create(model=model, prompt=rendered, max_tokens=24, temperature=0)
assert chat.choices[0].message.content == completion.choices[0].text, (chat, completion)
assert chat.choices[0].message.role == "assistant"
assert chat.usage.prompt_tokens == len(rendered)
sent_prompt_tokens += 2 * len(rendered)
sent_completion_tokens += 48
sent_requests += 2

stream = client.chat.completions.create(
    model=model, messages=messages, max_tokens=24, temperature=0, stream=True,
    stream_options={"include_usage": True},
)
text, usage = "", None
for chunk in stream:
    if chunk.usage is not None:
        usage = chunk.usage
    for c in chunk.choices:
        text += c.delta.content or ""
assert text == chat.choices[0].message.content, (text, chat.choices[0].message.content)
assert usage.completion_tokens == 24
sent_prompt_tokens += usage.prompt_tokens
sent_completion_tokens += 24
sent_requests += 1

# Scoring a text (echo with logprobs and max_tokens 0, as evaluation harnesses do): the golden's
# greedy continuation, appended to its prompt, is the most likely token at each of its places.
case = golden["cases"][0]
ids = case["prompt_token_ids"] + case["greedy_token_ids"][:16]
r = client.completions.create(
    model=model, prompt=ids, max_tokens=0, echo=True, logprobs=1, temperature=0
)
lp = r.choices[0].logprobs
assert len(lp.token_logprobs) == len(ids) and lp.token_logprobs[0] is None, lp
assert r.usage.completion_tokens == 0 and r.usage.prompt_tokens == len(ids), r.usage
for i in range(len(case["prompt_token_ids"]), len(ids)):
    (best,) = lp.top_logprobs[i].values()
    assert abs(best - lp.token_logprobs[i]) < 1e-4, (i, best, lp.token_logprobs[i])
sent_prompt_tokens += len(ids)
sent_completion_tokens += 1  # the engine generates one token, left out of the answer
sent_requests += 1

# Errors come back as the client's typed exceptions.
import openai
try:
    client.completions.create(model=model, prompt="x", max_tokens=10, temperature=7)
    raise AssertionError("temperature 7 was accepted")
except openai.BadRequestError as e:
    assert e.body["param"] == "temperature", e.body
try:
    client.completions.create(model="no-such-model", prompt="x")
    raise AssertionError("an unknown model was accepted")
except openai.NotFoundError:
    pass

metrics_text = urllib.request.urlopen(f"{base_url}/metrics").read().decode()
values = {}
for family in text_string_to_metric_families(metrics_text):
    for sample in family.samples:
        key = (sample.name, tuple(sorted((k, v) for k, v in sample.labels.items() if k != "model_name")))
        values[key] = sample.value
assert values[("pagoda:prompt_tokens_total", ())] == sent_prompt_tokens, (values, sent_prompt_tokens)
assert values[("pagoda:generation_tokens_total", ())] == sent_completion_tokens
assert values[("pagoda:request_success_total", (("finished_reason", "length"),))] == sent_requests
assert values[("pagoda:time_to_first_token_seconds_count", ())] == sent_requests
assert values[("pagoda:num_requests_running", ())] == 0
assert values[("pagoda:kv_cache_usage_perc", ())] == 0
print(f"openai client: {sent_requests} requests checked")
