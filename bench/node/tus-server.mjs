// The peer of bench/http_vs_tus_node.py: @tus/server with its file store, as its README sets it up.
// Usage: node tus-server.mjs <port> <directory>; prints "listening" once it accepts connections.
import http from "node:http";
import { Server } from "@tus/server";
import { FileStore } from "@tus/file-store";

const [port, directory] = process.argv.slice(2);
const tus = new Server({ path: "/files", datastore: new FileStore({ directory }) });
const server = http.createServer((req, res) => tus.handle(req, res));
server.listen(Number(port), "127.0.0.1", () => console.log("listening"));
