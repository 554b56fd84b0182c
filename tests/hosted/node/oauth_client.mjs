// The official TypeScript MCP SDK as an OAuth client: given only the server's URL and client credentials, it
// finds the authorization server through the server's 401 and Protected Resource Metadata, gets a token for
// the resource (client credentials, RFC 8707), lists the tools and calls budget_status; prints one JSON line.
// Usage: node oauth_client.mjs <server /mcp URL> <issuer> <client id> <client secret>
import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { StreamableHTTPClientTransport } from "@modelcontextprotocol/sdk/client/streamableHttp.js";
import { ClientCredentialsProvider } from "@modelcontextprotocol/sdk/client/auth-extensions.js";

const [url, issuer, clientId, clientSecret] = process.argv.slice(2);
const authProvider = new ClientCredentialsProvider({ clientId, clientSecret, scope: "apikey", expectedIssuer: issuer });
const client = new Client({ name: "third-party-oauth-client", version: "1.0.0" });
await client.connect(new StreamableHTTPClientTransport(new URL(url), { authProvider }));
const tools = await client.listTools();
const budget = await client.callTool({ name: "budget_status", arguments: {} });
console.log(JSON.stringify({ tools: tools.tools.map((t) => t.name), budget: budget.structuredContent }));
await client.close();
