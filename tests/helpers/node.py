"""The Node Deepgram SDK the tests install, and a guard that keeps Node clients on loopback."""

NODE_SDK = "@deepgram/sdk@5.13.0"

NODE_GUARD = r'''
const net = require('net');
const connect = net.Socket.prototype.connect;
net.Socket.prototype.connect = function (...args) {
  const o = typeof args[0] === 'object' ? args[0] : { port: args[0], host: args[1] };
  const host = o.host || 'localhost';
  if (!o.path && !['127.0.0.1', 'localhost', '::1'].includes(host)) throw new Error(`test guard: refused ${host}`);
  return connect.apply(this, args);
};
'''
