// The TypeScript SDK (@anthropic-ai/sdk from npm), unmodified, against ANTHROPIC_BASE_URL
// (budgetd gateway). Run by tests/gateway/test_node_clients.py:
//   node sdk_calls.mjs <scenario>    with ANTHROPIC_BASE_URL and ANTHROPIC_API_KEY set
// Prints one JSON line: what the SDK returned, or the error it raised.
import Anthropic from "@anthropic-ai/sdk";

const client = new Anthropic({ maxRetries: 0 });
const model = "claude-haiku-4-5";
const ask = (text, extra = {}) => ({
  model,
  max_tokens: 256,
  messages: [{ role: "user", content: text }],
  ...extra,
});

const scenarios = {
  async create() {
    const message = await client.messages.create(ask("hello from node"));
    return { model: message.model, usage: message.usage, text: message.content[0].text };
  },
  async stream() {
    const stream = client.messages.stream(ask("stream from node [fake:cache] [fake:out=33]"));
    const message = await stream.finalMessage();
    return { model: message.model, usage: message.usage, text: message.content[0].text };
  },
  async beta() {
    const message = await client.beta.messages.create({
      ...ask("beta from node"),
      betas: ["fake-beta-2026"],
    });
    return { model: message.model, usage: message.usage };
  },
  async never() {
    await client.messages.create(ask("too big", { max_tokens: 20000 }));
  },
  async spend() {
    const message = await client.messages.create(ask("spend [fake:out=12000]", { max_tokens: 1000 }));
    return { model: message.model, usage: message.usage };
  },
  async denied() {
    await client.messages.create(ask("more", { max_tokens: 1000 }));
  },
};

try {
  const result = await scenarios[process.argv[2]]();
  console.log(JSON.stringify({ ok: true, result }));
} catch (err) {
  console.log(
    JSON.stringify({
      ok: false,
      error: err.constructor.name,
      isRateLimit: err instanceof Anthropic.RateLimitError,
      isBadRequest: err instanceof Anthropic.BadRequestError,
      status: err.status,
      message: err.message,
      retryAfter: err.headers?.get?.("retry-after") ?? null,
    }),
  );
}
