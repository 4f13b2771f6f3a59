// An ed25519 key pair made in the browser (WebCrypto), written in OpenSSH's
// own formats: the public key as an authorized_keys line, the private key as
// an unencrypted "openssh-key-v1" file. The private key is handed to the user
// as a download and never leaves the browser otherwise.

function u32(n: number): Uint8Array {
  return new Uint8Array([(n >>> 24) & 255, (n >>> 16) & 255, (n >>> 8) & 255, n & 255]);
}

function str(b: Uint8Array | string): Uint8Array {
  const bytes = typeof b === 'string' ? new TextEncoder().encode(b) : b;
  return concat(u32(bytes.length), bytes);
}

function concat(...parts: Uint8Array[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let o = 0;
  for (const p of parts) {
    out.set(p, o);
    o += p.length;
  }
  return out;
}

function b64(b: Uint8Array): string {
  let s = '';
  for (const c of b) s += String.fromCharCode(c);
  return btoa(s);
}

export interface KeyPair {
  publicKey: string;
  privateKey: string;
}

export async function generateEd25519(comment: string): Promise<KeyPair> {
  const kp = (await crypto.subtle.generateKey({ name: 'Ed25519' }, true, ['sign', 'verify'])) as CryptoKeyPair;
  const pub = new Uint8Array(await crypto.subtle.exportKey('raw', kp.publicKey));
  // PKCS#8 of an Ed25519 key ends with its 32-byte seed.
  const pkcs8 = new Uint8Array(await crypto.subtle.exportKey('pkcs8', kp.privateKey));
  const seed = pkcs8.slice(pkcs8.length - 32);
  const blob = concat(str('ssh-ed25519'), str(pub));
  const check = crypto.getRandomValues(new Uint8Array(4));
  let priv = concat(check, check, str('ssh-ed25519'), str(pub), str(concat(seed, pub)), str(comment));
  const pad = [];
  for (let i = 1; (priv.length + pad.length) % 8 !== 0; i++) pad.push(i);
  priv = concat(priv, new Uint8Array(pad));
  const file = concat(new TextEncoder().encode('openssh-key-v1\0'), str('none'), str('none'), str(new Uint8Array()), u32(1), str(blob), str(priv));
  const body = b64(file).replace(/(.{70})/g, '$1\n');
  return {
    publicKey: `ssh-ed25519 ${b64(blob)} ${comment}`,
    privateKey: `-----BEGIN OPENSSH PRIVATE KEY-----\n${body}${body.endsWith('\n') ? '' : '\n'}-----END OPENSSH PRIVATE KEY-----\n`,
  };
}
