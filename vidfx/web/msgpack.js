// A small MessagePack codec for the control channel (maps of strings, numbers, booleans, nil, arrays, bins).
// Written out here so the page needs no build step and no CDN.
"use strict";

const msgpack = (() => {
  const utf8 = new TextEncoder();
  const utf8d = new TextDecoder();

  function encode(value) {
    const parts = [];
    let size = 0;
    const push = (bytes) => { parts.push(bytes); size += bytes.length; };
    const u8 = (...b) => push(Uint8Array.from(b));
    const be = (prefix, n, bytes) => {
      const buf = new Uint8Array(1 + bytes);
      buf[0] = prefix;
      const view = new DataView(buf.buffer);
      if (bytes === 1) view.setUint8(1, n);
      else if (bytes === 2) view.setUint16(1, n);
      else if (bytes === 4) view.setUint32(1, n);
      push(buf);
    };
    const write = (v) => {
      if (v === null || v === undefined) u8(0xc0);
      else if (v === false) u8(0xc2);
      else if (v === true) u8(0xc3);
      else if (typeof v === "number") {
        if (Number.isInteger(v) && v >= 0 && v < 2 ** 32) {
          if (v < 128) u8(v);
          else if (v < 256) be(0xcc, v, 1);
          else if (v < 65536) be(0xcd, v, 2);
          else be(0xce, v, 4);
        } else if (Number.isInteger(v) && v < 0 && v >= -(2 ** 31)) {
          if (v >= -32) u8(0x100 + v);
          else {
            const buf = new Uint8Array(5);
            buf[0] = 0xd2;
            new DataView(buf.buffer).setInt32(1, v);
            push(buf);
          }
        } else {
          const buf = new Uint8Array(9);
          buf[0] = 0xcb;
          new DataView(buf.buffer).setFloat64(1, v);
          push(buf);
        }
      } else if (typeof v === "string") {
        const bytes = utf8.encode(v);
        const n = bytes.length;
        if (n < 32) u8(0xa0 | n);
        else if (n < 256) be(0xd9, n, 1);
        else if (n < 65536) be(0xda, n, 2);
        else be(0xdb, n, 4);
        push(bytes);
      } else if (v instanceof Uint8Array) {
        const n = v.length;
        if (n < 256) be(0xc4, n, 1);
        else if (n < 65536) be(0xc5, n, 2);
        else be(0xc6, n, 4);
        push(v);
      } else if (Array.isArray(v)) {
        const n = v.length;
        if (n < 16) u8(0x90 | n);
        else if (n < 65536) be(0xdc, n, 2);
        else be(0xdd, n, 4);
        v.forEach(write);
      } else if (typeof v === "object") {
        const keys = Object.keys(v).filter((k) => v[k] !== undefined);
        const n = keys.length;
        if (n < 16) u8(0x80 | n);
        else if (n < 65536) be(0xde, n, 2);
        else be(0xdf, n, 4);
        for (const k of keys) { write(k); write(v[k]); }
      } else throw new TypeError("msgpack: cannot encode " + typeof v);
    };
    write(value);
    const out = new Uint8Array(size);
    let at = 0;
    for (const p of parts) { out.set(p, at); at += p.length; }
    return out;
  }

  function decode(input) {
    const bytes = input instanceof Uint8Array ? input : new Uint8Array(input);
    const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
    let at = 0;
    const str = (n) => { const s = utf8d.decode(bytes.subarray(at, at + n)); at += n; return s; };
    const bin = (n) => { const b = bytes.slice(at, at + n); at += n; return b; };
    const arr = (n) => { const a = []; for (let i = 0; i < n; i++) a.push(read()); return a; };
    const map = (n) => { const m = {}; for (let i = 0; i < n; i++) { const k = read(); m[k] = read(); } return m; };
    const read = () => {
      if (at >= bytes.length) throw new RangeError("msgpack: truncated");
      const t = bytes[at++];
      if (t < 0x80) return t;
      if (t >= 0xe0) return t - 0x100;
      if ((t & 0xf0) === 0x80) return map(t & 0x0f);
      if ((t & 0xf0) === 0x90) return arr(t & 0x0f);
      if ((t & 0xe0) === 0xa0) return str(t & 0x1f);
      let v;
      switch (t) {
        case 0xc0: return null;
        case 0xc2: return false;
        case 0xc3: return true;
        case 0xc4: v = view.getUint8(at); at += 1; return bin(v);
        case 0xc5: v = view.getUint16(at); at += 2; return bin(v);
        case 0xc6: v = view.getUint32(at); at += 4; return bin(v);
        case 0xca: v = view.getFloat32(at); at += 4; return v;
        case 0xcb: v = view.getFloat64(at); at += 8; return v;
        case 0xcc: v = view.getUint8(at); at += 1; return v;
        case 0xcd: v = view.getUint16(at); at += 2; return v;
        case 0xce: v = view.getUint32(at); at += 4; return v;
        case 0xcf: v = Number(view.getBigUint64(at)); at += 8; return v;
        case 0xd0: v = view.getInt8(at); at += 1; return v;
        case 0xd1: v = view.getInt16(at); at += 2; return v;
        case 0xd2: v = view.getInt32(at); at += 4; return v;
        case 0xd3: v = Number(view.getBigInt64(at)); at += 8; return v;
        case 0xd9: v = view.getUint8(at); at += 1; return str(v);
        case 0xda: v = view.getUint16(at); at += 2; return str(v);
        case 0xdb: v = view.getUint32(at); at += 4; return str(v);
        case 0xdc: v = view.getUint16(at); at += 2; return arr(v);
        case 0xdd: v = view.getUint32(at); at += 4; return arr(v);
        case 0xde: v = view.getUint16(at); at += 2; return map(v);
        case 0xdf: v = view.getUint32(at); at += 4; return map(v);
        default: throw new TypeError("msgpack: unsupported type 0x" + t.toString(16));
      }
    };
    const value = read();
    if (at !== bytes.length) throw new RangeError("msgpack: trailing bytes");
    return value;
  }

  return { encode, decode };
})();
