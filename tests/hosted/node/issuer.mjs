// A real OAuth 2.1 authorization server for the tests: oidc-provider with the client-credentials grant and
// resource indicators (RFC 8707), issuing RS256 JWT access tokens whose `aud` is the requested resource.
// Two issuers on two loopback ports share one signing key, so a token of the "other" issuer has a valid
// signature and can only be told apart by its `iss`.
// Usage: node issuer.mjs '<private RSA JWK as JSON>'   (prints {"issuer": ..., "other": ...} once listening;
// exits when its stdin closes, so it never outlives the test that started it)
import http from "node:http";
import Provider from "oidc-provider";

const jwk = JSON.parse(process.argv[2]);
const clients = [
  { client_id: "agent-a", client_secret: "agent-a-secret-0123456789", scope: "apikey other" },
  { client_id: "agent-b", client_secret: "agent-b-secret-0123456789", scope: "apikey other" },
].map((c) => ({ ...c, grant_types: ["client_credentials"], redirect_uris: [], response_types: [] }));

function start() {
  return new Promise((resolve) => {
    const server = http.createServer();
    server.listen(0, "127.0.0.1", () => {
      const issuer = `http://127.0.0.1:${server.address().port}`;
      const provider = new Provider(issuer, {
        clients,
        jwks: { keys: [jwk] },
        scopes: ["apikey", "other"],
        features: {
          devInteractions: { enabled: false },
          clientCredentials: { enabled: true },
          resourceIndicators: {
            enabled: true,
            defaultResource: () => undefined,
            useGrantedResource: () => true,
            getResourceServerInfo: (ctx, resource) => ({
              scope: "apikey other",
              audience: resource,
              accessTokenTTL: 300,
              accessTokenFormat: "jwt",
              jwt: { sign: { alg: "RS256" } },
            }),
          },
        },
      });
      server.on("request", provider.callback());
      resolve({ issuer, server });
    });
  });
}

const [main, other] = await Promise.all([start(), start()]);
console.log(JSON.stringify({ issuer: main.issuer, other: other.issuer }));
process.stdin.on("end", () => process.exit(0));
process.stdin.on("close", () => process.exit(0));
process.stdin.resume();
