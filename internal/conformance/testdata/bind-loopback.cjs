// Preloaded with `node --require` in front of servers that bind every
// interface (such as @modelcontextprotocol/server-everything): it makes each
// TCP listen bind to loopback (MCPTUN_BIND_HOST, default 127.0.0.1), and, when
// MCPTUN_LISTEN_FD names an open file descriptor, writes "HOST:PORT\n" there
// once the first server is listening, so that a caller can ask for PORT=0.
'use strict';
const net = require('net');
const fs = require('fs');

const host = process.env.MCPTUN_BIND_HOST || '127.0.0.1';
const reportFd = process.env.MCPTUN_LISTEN_FD ? Number(process.env.MCPTUN_LISTEN_FD) : -1;
let reported = false;
const listen = net.Server.prototype.listen;

function isPort(v) {
  return typeof v === 'number' || (typeof v === 'string' && /^\d+$/.test(v));
}

net.Server.prototype.listen = function (...args) {
  if (args.length === 0 || typeof args[0] === 'function') {
    args.unshift(0, host); // listen([cb]): a random port
  } else if (isPort(args[0])) {
    if (typeof args[1] === 'string') args[1] = host; else args.splice(1, 0, host);
  } else if (args[0] !== null && typeof args[0] === 'object' && args[0].path === undefined && !(args[0] instanceof net.Server)) {
    args[0] = Object.assign({}, args[0], { host });
  }
  if (reportFd >= 0 && !reported) {
    reported = true;
    this.once('listening', () => {
      const a = this.address();
      const h = a.family === 'IPv6' ? `[${a.address}]` : a.address;
      try {
        fs.writeSync(reportFd, `${h}:${a.port}\n`);
        fs.closeSync(reportFd);
      } catch (e) {
        console.error('bind-loopback: cannot report address:', e);
      }
    });
  }
  return listen.apply(this, args);
};
