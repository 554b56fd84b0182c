// A third-party MCP client: the official TypeScript SDK connects to the hosted server, lists the tools,
// calls budget_status and estimate, and prints what it got as one JSON line.
// Usage: node client.mjs <streamable-http|sse> <server base URL> <bearer token>
import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { StreamableHTTPClientTransport } from "@modelcontextprotocol/sdk/client/streamableHttp.js";
import { SSEClientTransport } from "@modelcontextprotocol/sdk/client/sse.js";

const [transportName, baseUrl, token] = process.argv.slice(2);
const headers = { Authorization: `Bearer ${token}` };
const transport =
  transportName === "sse"
    ? new SSEClientTransport(new URL(`${baseUrl}/sse`), {
        requestInit: { headers },
        eventSourceInit: { fetch: (url, init) => fetch(url, { ...init, headers: { ...init?.headers, ...headers } }) },
      })
    : new StreamableHTTPClientTransport(new URL(`${baseUrl}/mcp`), { requestInit: { headers } });

const client = new Client({ name: "third-party-ts-client", version: "1.0.0" });
await client.connect(transport);
const tools = await client.listTools();
const budget = await client.callTool({ name: "budget_status", arguments: {} });
const estimate = await client.callTool({ name: "estimate", arguments: { model: "seedance-2-fast", duration: 6 } });
const bad = await client.callTool({ name: "generate_video", arguments: { prompt: "", model: "seedance-2" } });
console.log(
  JSON.stringify({
    protocol: client.getServerVersion(),
    tools: tools.tools.map((t) => t.name),
    outputSchemas: tools.tools.filter((t) => t.outputSchema).length,
    budget: budget.structuredContent,
    estimate: estimate.structuredContent,
    badIsError: bad.isError === true,
  }),
);
await client.close();
