// rtaa's Deepgram redirect for Node processes (no dependencies: it runs inside the target's process).
//
// NODE_OPTIONS="--require <this file>" (eval "$(rtaa fake-deepgram --print-env node)") rewrites WebSocket
// connections to a host in RTAA_DEEPGRAM_HOSTS (default api.deepgram.com) to RTAA_DEEPGRAM_URL, keeping
// path and query:
// - https.request / https.get: the `ws` package (used by @deepgram/sdk) and other clients upgrade over it;
//   the request goes to the emulator over plain TCP instead of TLS. Builtins are shared by CommonJS and
//   ES modules, so both are covered.
// - the global WebSocket (undici, Node >= 22): wrapped so its constructor gets the emulator's URL.
'use strict';
const http = require('http');
const https = require('https');
const net = require('net');

const targetText = process.env.RTAA_DEEPGRAM_URL || '';
const hosts = new Set((process.env.RTAA_DEEPGRAM_HOSTS || 'api.deepgram.com')
  .split(',').map((h) => h.trim().toLowerCase()).filter(Boolean));
let announced = false;

function announce(from, to) {
  if (!announced) {
    announced = true;
    process.stderr.write(`rtaa redirect: ${from} -> ${to}\n`);
  }
}

if (!targetText) {
  process.stderr.write('rtaa redirect: RTAA_DEEPGRAM_URL is not set; nothing redirected\n');
} else {
  const target = new URL(targetText);
  const targetHost = target.hostname.replace(/^\[|\]$/g, '');
  const targetPort = Number(target.port || (target.protocol === 'wss:' ? 443 : 80));
  const secureTarget = target.protocol === 'wss:';

  const redirected = (host) => typeof host === 'string' && hosts.has(host.toLowerCase().replace(/:\d+$/, ''));

  const originalHttpsRequest = https.request;

  // https.request(options[, cb]) or (url[, options][, cb]): ws calls it with one options object.
  function request(...args) {
    const opts = args[0];
    if (opts && typeof opts === 'object' && !(opts instanceof URL) && redirected(opts.host || opts.hostname)) {
      announce(`wss://${opts.host || opts.hostname}`, `${target.protocol}//${target.host}`);
      const copy = { ...opts, host: targetHost, hostname: targetHost, port: targetPort, servername: undefined };
      copy.headers = { ...(opts.headers || {}), Host: target.host };
      if (secureTarget) {
        return originalHttpsRequest.call(https, copy, ...args.slice(1));
      }
      // ws sets a TLS connector and no agent: the emulator speaks plain TCP
      copy.createConnection = () => net.connect({ host: targetHost, port: targetPort });
      delete copy.agent;
      return http.request(copy, ...args.slice(1));
    }
    return originalHttpsRequest.apply(https, args);
  }

  https.request = request;
  https.get = function get(...args) { // what https.get is: request() then end()
    const req = request(...args);
    req.end();
    return req;
  };

  if (typeof globalThis.WebSocket === 'function') {
    const Original = globalThis.WebSocket;
    const Redirected = class WebSocket extends Original {
      constructor(url, ...rest) {
        const u = new URL(String(url));
        if (redirected(u.hostname)) {
          announce(`${u.protocol}//${u.host}`, `${target.protocol}//${target.host}`);
          u.protocol = target.protocol;
          u.host = target.host;
        }
        super(u.toString(), ...rest);
      }
    };
    globalThis.WebSocket = Redirected;
  }
}
