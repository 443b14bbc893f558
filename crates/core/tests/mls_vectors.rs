//! The MLS interoperability test vectors of the mlswg
//! (<https://github.com/mlswg/mls-implementations>, `test-vectors/`), run
//! through the crypto provider that channels use
//! ([`backchannel_core::crypto_provider::Crypto`]).
//!
//! The files in `tests/vectors/` are copied unchanged from that repository
//! (`tests/vectors/README.md` gives the commit and their SHA-256). The vectors
//! cover the classical suites only, not X-Wing; this test runs suites 1
//! (`MLS_128_DHKEMX25519_AES128GCM_SHA256_Ed25519`) and 3
//! (`MLS_128_DHKEMX25519_CHACHA20POLY1305_SHA256_Ed25519`), the ones the
//! provider supports, and skips the others (P-256, X448, P-521, Ed448, P-384).
//!
//! openmls runs these vectors through crate-private functions, so the checks
//! here build each operation from the provider's `OpenMlsCrypto` calls and the
//! structures of RFC 9420 (the `*_with_label` functions of section 5, the
//! secret tree of 9, the framing of 6), encoded with openmls' `tls_codec`:
//!
//! * `crypto-basics.json`: every check the file defines: `RefHash`,
//!   `ExpandWithLabel`, `DeriveSecret`, `DeriveTreeSecret`, `SignWithLabel`
//!   (the vector's signature verifies, and ours equals it byte for byte, as
//!   Ed25519 is deterministic), `EncryptWithLabel` (the vector's ciphertext
//!   opens; ours opens).
//! * `tree-math.json`: every check (node count, root, left, right, parent,
//!   sibling), on the tree arithmetic of RFC 9420 appendix C written here; it
//!   involves no cryptography, and it is the arithmetic the secret-tree check
//!   walks.
//! * `secret-tree.json`: the sender-data key and nonce, and the handshake and
//!   application keys and nonces of every leaf at every listed generation.
//! * `message-protection.json`: for the proposal and the commit, the
//!   `PublicMessage` verifies (signature over `FramedContentTBS` with the
//!   group context, membership tag) and carries the vector's proposal or
//!   commit, and protecting that proposal or commit again gives the same
//!   bytes; for the proposal, the commit and the application data, the
//!   `PrivateMessage` opens (sender data, secret-tree key of leaf 1 with the
//!   reuse guard, content, signature) and gives the vector's content, and
//!   protecting it again with the same generation, reuse guard and padding
//!   gives the same bytes, while protecting it with another reuse guard and
//!   generation 0 gives a message that opens. Not checked: that openmls refuses
//!   an application message as a `PublicMessage` (a rule of openmls' framing,
//!   not of the crypto provider).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;

use backchannel_core::crypto_provider::Crypto;
use openmls::prelude::tls_codec::{Deserialize as _, Serialize as _, VLBytes};
use openmls_traits::crypto::OpenMlsCrypto;
use openmls_traits::types::{Ciphersuite, HpkeCiphertext};
use serde_json::Value;

/// The suites that the provider supports and the vectors cover.
const SUITES: [u16; 2] = [1, 3];

fn load(name: &str) -> Vec<Value> {
    let path = format!("{}/tests/vectors/{name}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    serde_json::from_str(&text).unwrap()
}

/// The test cases of `name` for the suites this test runs, with their suite;
/// checks that each of those suites has at least one.
fn cases(name: &str) -> Vec<(Ciphersuite, Value)> {
    let mut out = Vec::new();
    let mut seen = BTreeMap::new();
    for case in load(name) {
        let id = case["cipher_suite"].as_u64().unwrap() as u16;
        if !SUITES.contains(&id) {
            continue;
        }
        *seen.entry(id).or_insert(0) += 1;
        out.push((Ciphersuite::try_from(id).unwrap(), case));
    }
    assert_eq!(
        seen.keys().copied().collect::<Vec<_>>(),
        SUITES,
        "{name}: a suite has no case"
    );
    out
}

fn hex(v: &Value) -> Vec<u8> {
    data_encoding::HEXLOWER_PERMISSIVE
        .decode(v.as_str().unwrap().as_bytes())
        .unwrap()
}

fn text(v: &Value) -> &str {
    v.as_str().unwrap()
}

fn num(v: &Value) -> u64 {
    v.as_u64().unwrap()
}

// ---------------------------------------------------------------------------
// Encoding (RFC 9420 section 2.1.2: vectors with a variable-length length).

/// `opaque data<V>`.
fn vl(bytes: &[u8]) -> Vec<u8> {
    VLBytes::new(bytes.to_vec()).tls_serialize_detached().unwrap()
}

/// Reads the fields of a message in order; every read checks the length.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn vl(&mut self) -> Vec<u8> {
        VLBytes::tls_deserialize(&mut self.0).unwrap().as_slice().to_vec()
    }
    fn take(&mut self, n: usize) -> &'a [u8] {
        assert!(self.0.len() >= n, "message too short");
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        head
    }
    fn u8(&mut self) -> u8 {
        self.take(1)[0]
    }
    fn u16(&mut self) -> u16 {
        u16::from_be_bytes(self.take(2).try_into().unwrap())
    }
    fn u32(&mut self) -> u32 {
        u32::from_be_bytes(self.take(4).try_into().unwrap())
    }
    fn u64(&mut self) -> u64 {
        u64::from_be_bytes(self.take(8).try_into().unwrap())
    }
    /// Checks that `expected` comes next and skips it.
    fn expect(&mut self, expected: &[u8]) {
        assert_eq!(self.take(expected.len()), expected);
    }
    fn end(&self) {
        assert!(self.0.is_empty(), "{} bytes left over", self.0.len());
    }
}

// ---------------------------------------------------------------------------
// RFC 9420 section 5: the labelled functions, from provider calls.

fn mls_label(label: &str) -> Vec<u8> {
    [b"MLS 1.0 ".as_slice(), label.as_bytes()].concat()
}

fn expand_with_label(c: &Crypto, cs: Ciphersuite, secret: &[u8], label: &str, context: &[u8], len: u16) -> Vec<u8> {
    let info = [len.to_be_bytes().to_vec(), vl(&mls_label(label)), vl(context)].concat();
    let out = c.hkdf_expand(cs.hash_algorithm(), secret, &info, len.into()).unwrap();
    out.as_slice().to_vec()
}

fn derive_secret(c: &Crypto, cs: Ciphersuite, secret: &[u8], label: &str) -> Vec<u8> {
    expand_with_label(c, cs, secret, label, &[], cs.hash_length() as u16)
}

fn derive_tree_secret(c: &Crypto, cs: Ciphersuite, secret: &[u8], label: &str, generation: u32, len: u16) -> Vec<u8> {
    expand_with_label(c, cs, secret, label, &generation.to_be_bytes(), len)
}

fn ref_hash(c: &Crypto, cs: Ciphersuite, label: &[u8], value: &[u8]) -> Vec<u8> {
    c.hash(cs.hash_algorithm(), &[vl(label), vl(value)].concat()).unwrap()
}

fn sign_content(label: &str, content: &[u8]) -> Vec<u8> {
    [vl(&mls_label(label)), vl(content)].concat()
}

fn sign_with_label(c: &Crypto, cs: Ciphersuite, key: &[u8], label: &str, content: &[u8]) -> Vec<u8> {
    c.sign(cs.signature_algorithm(), &sign_content(label, content), key)
        .unwrap()
}

fn verify_with_label(c: &Crypto, cs: Ciphersuite, public: &[u8], label: &str, content: &[u8], sig: &[u8]) -> bool {
    c.verify_signature(cs.signature_algorithm(), &sign_content(label, content), public, sig)
        .is_ok()
}

fn encrypt_context(label: &str, context: &[u8]) -> Vec<u8> {
    [vl(&mls_label(label)), vl(context)].concat()
}

// ---------------------------------------------------------------------------

#[test]
fn crypto_basics() {
    let c = Crypto::new().unwrap();
    for (cs, t) in cases("crypto-basics.json") {
        let v = &t["ref_hash"];
        assert_eq!(
            ref_hash(&c, cs, text(&v["label"]).as_bytes(), &hex(&v["value"])),
            hex(&v["out"]),
            "{cs:?} ref_hash"
        );

        let v = &t["expand_with_label"];
        let out = expand_with_label(
            &c,
            cs,
            &hex(&v["secret"]),
            text(&v["label"]),
            &hex(&v["context"]),
            num(&v["length"]) as u16,
        );
        assert_eq!(out, hex(&v["out"]), "{cs:?} expand_with_label");

        let v = &t["derive_secret"];
        let out = derive_secret(&c, cs, &hex(&v["secret"]), text(&v["label"]));
        assert_eq!(out, hex(&v["out"]), "{cs:?} derive_secret");

        let v = &t["derive_tree_secret"];
        let out = derive_tree_secret(
            &c,
            cs,
            &hex(&v["secret"]),
            text(&v["label"]),
            num(&v["generation"]) as u32,
            num(&v["length"]) as u16,
        );
        assert_eq!(out, hex(&v["out"]), "{cs:?} derive_tree_secret");

        let v = &t["sign_with_label"];
        let (private, public, label, content) =
            (hex(&v["priv"]), hex(&v["pub"]), text(&v["label"]), hex(&v["content"]));
        let signature = hex(&v["signature"]);
        assert!(
            verify_with_label(&c, cs, &public, label, &content, &signature),
            "{cs:?} the vector's signature"
        );
        let ours = sign_with_label(&c, cs, &private, label, &content);
        assert!(
            verify_with_label(&c, cs, &public, label, &content, &ours),
            "{cs:?} our signature"
        );
        assert_eq!(ours, signature, "{cs:?} Ed25519 is deterministic");
        assert!(!verify_with_label(&c, cs, &public, "other label", &content, &signature));

        let v = &t["encrypt_with_label"];
        let (private, public) = (hex(&v["priv"]), hex(&v["pub"]));
        let info = encrypt_context(text(&v["label"]), &hex(&v["context"]));
        let plaintext = hex(&v["plaintext"]);
        let theirs = HpkeCiphertext {
            kem_output: hex(&v["kem_output"]).into(),
            ciphertext: hex(&v["ciphertext"]).into(),
        };
        let opened = c.hpke_open(cs.hpke_config(), &theirs, &private, &info, &[]).unwrap();
        assert_eq!(opened, plaintext, "{cs:?} decrypt_with_label");
        let ours = c.hpke_seal(cs.hpke_config(), &public, &info, &[], &plaintext).unwrap();
        let opened = c.hpke_open(cs.hpke_config(), &ours, &private, &info, &[]).unwrap();
        assert_eq!(opened, plaintext, "{cs:?} encrypt_with_label");
    }
}

// ---------------------------------------------------------------------------
// RFC 9420 appendix C: array-based trees.

mod tree {
    pub fn log2(x: u32) -> u32 {
        if x == 0 {
            0
        } else {
            31 - x.leading_zeros()
        }
    }

    pub fn level(x: u32) -> u32 {
        x.trailing_ones()
    }

    pub fn node_width(n: u32) -> u32 {
        if n == 0 {
            0
        } else {
            2 * (n - 1) + 1
        }
    }

    pub fn root(n: u32) -> u32 {
        (1 << log2(node_width(n))) - 1
    }

    pub fn left(x: u32) -> Option<u32> {
        let k = level(x);
        (k != 0).then(|| x ^ (1 << (k - 1)))
    }

    pub fn right(x: u32) -> Option<u32> {
        let k = level(x);
        (k != 0).then(|| x ^ (3 << (k - 1)))
    }

    fn parent_step(x: u32) -> u32 {
        let k = level(x);
        let b = (x >> (k + 1)) & 1;
        (x | (1 << k)) ^ (b << (k + 1))
    }

    pub fn parent(x: u32, n: u32) -> Option<u32> {
        if x == root(n) {
            return None;
        }
        let mut p = parent_step(x);
        while p >= node_width(n) {
            p = parent_step(p);
        }
        Some(p)
    }

    pub fn sibling(x: u32, n: u32) -> Option<u32> {
        let p = parent(x, n)?;
        if x < p {
            right(p)
        } else {
            left(p)
        }
    }
}

#[test]
fn tree_math() {
    let all = load("tree-math.json");
    assert!(!all.is_empty());
    for t in all {
        let n = num(&t["n_leaves"]) as u32;
        let width = tree::node_width(n);
        assert_eq!(width as u64, num(&t["n_nodes"]), "n_nodes, {n} leaves");
        assert_eq!(tree::root(n) as u64, num(&t["root"]), "root, {n} leaves");
        let want = |key: &str, i: u32| t[key][i as usize].as_u64().map(|x| x as u32);
        for key in ["left", "right", "parent", "sibling"] {
            assert_eq!(t[key].as_array().unwrap().len(), width as usize, "{key}, {n} leaves");
        }
        for i in 0..width {
            assert_eq!(tree::left(i), want("left", i), "left({i}), {n} leaves");
            assert_eq!(tree::right(i), want("right", i), "right({i}), {n} leaves");
            assert_eq!(tree::parent(i, n), want("parent", i), "parent({i}), {n} leaves");
            assert_eq!(tree::sibling(i, n), want("sibling", i), "sibling({i}), {n} leaves");
        }
    }
}

// ---------------------------------------------------------------------------
// RFC 9420 section 9: the secret tree, and section 6.3.2: sender data.

/// The secret of leaf `leaf` in a tree of `n` leaves whose root secret is
/// `encryption_secret`.
fn leaf_secret(c: &Crypto, cs: Ciphersuite, encryption_secret: &[u8], n: u32, leaf: u32) -> Vec<u8> {
    let target = 2 * leaf;
    let mut node = tree::root(n);
    let mut secret = encryption_secret.to_vec();
    let nh = cs.hash_length() as u16;
    while node != target {
        // Go left if the target is below on the left: node indices are in order.
        let (next, side) = if target < node {
            (tree::left(node).unwrap(), "left")
        } else {
            (tree::right(node).unwrap(), "right")
        };
        secret = expand_with_label(c, cs, &secret, "tree", side.as_bytes(), nh);
        node = next;
    }
    secret
}

/// Key and nonce of generation `generation` of a ratchet ("handshake" or
/// "application") of a leaf.
fn ratchet(c: &Crypto, cs: Ciphersuite, leaf_secret: &[u8], kind: &str, generation: u32) -> (Vec<u8>, Vec<u8>) {
    let nh = cs.hash_length() as u16;
    let mut secret = expand_with_label(c, cs, leaf_secret, kind, &[], nh);
    for j in 0..generation {
        secret = derive_tree_secret(c, cs, &secret, "secret", j, nh);
    }
    (
        derive_tree_secret(c, cs, &secret, "key", generation, cs.aead_key_length() as u16),
        derive_tree_secret(c, cs, &secret, "nonce", generation, cs.aead_nonce_length() as u16),
    )
}

fn sender_data_key_nonce(c: &Crypto, cs: Ciphersuite, secret: &[u8], ciphertext: &[u8]) -> (Vec<u8>, Vec<u8>) {
    let sample = &ciphertext[..cs.hash_length().min(ciphertext.len())];
    (
        expand_with_label(c, cs, secret, "key", sample, cs.aead_key_length() as u16),
        expand_with_label(c, cs, secret, "nonce", sample, cs.aead_nonce_length() as u16),
    )
}

#[test]
fn secret_tree() {
    let c = Crypto::new().unwrap();
    let mut checked = 0;
    for (cs, t) in cases("secret-tree.json") {
        let sd = &t["sender_data"];
        let (key, nonce) = sender_data_key_nonce(&c, cs, &hex(&sd["sender_data_secret"]), &hex(&sd["ciphertext"]));
        assert_eq!(key, hex(&sd["key"]), "{cs:?} sender data key");
        assert_eq!(nonce, hex(&sd["nonce"]), "{cs:?} sender data nonce");

        let leaves = t["leaves"].as_array().unwrap();
        let n = leaves.len() as u32;
        let root = hex(&t["encryption_secret"]);
        for (i, generations) in leaves.iter().enumerate() {
            let secret = leaf_secret(&c, cs, &root, n, i as u32);
            for g in generations.as_array().unwrap() {
                let generation = num(&g["generation"]) as u32;
                for kind in ["handshake", "application"] {
                    let (key, nonce) = ratchet(&c, cs, &secret, kind, generation);
                    let at = format!("{cs:?}, {n} leaves, leaf {i}, {kind} generation {generation}");
                    assert_eq!(key, hex(&g[format!("{kind}_key")]), "{at}: key");
                    assert_eq!(nonce, hex(&g[format!("{kind}_nonce")]), "{at}: nonce");
                    checked += 1;
                }
            }
        }
    }
    assert!(checked > 100, "{checked} ratchet positions checked");
}

// ---------------------------------------------------------------------------
// RFC 9420 section 6: message framing and protection.

const VERSION: u16 = 1; // mls10
const WIRE_PUBLIC: u16 = 1;
const WIRE_PRIVATE: u16 = 2;
const SENDER_MEMBER: u8 = 1;
const APPLICATION: u8 = 1;
const PROPOSAL: u8 = 2;
const COMMIT: u8 = 3;
/// The vectors' sender.
const LEAF: u32 = 1;

/// What a test case of message-protection.json gives.
struct Group {
    cs: Ciphersuite,
    group_id: Vec<u8>,
    epoch: u64,
    /// The serialized `GroupContext` (empty extensions).
    context: Vec<u8>,
    signature_priv: Vec<u8>,
    signature_pub: Vec<u8>,
    encryption_secret: Vec<u8>,
    sender_data_secret: Vec<u8>,
    membership_key: Vec<u8>,
}

impl Group {
    fn new(cs: Ciphersuite, t: &Value) -> Self {
        let group_id = hex(&t["group_id"]);
        let epoch = num(&t["epoch"]);
        let context = [
            VERSION.to_be_bytes().to_vec(),
            u16::from(cs).to_be_bytes().to_vec(),
            vl(&group_id),
            epoch.to_be_bytes().to_vec(),
            vl(&hex(&t["tree_hash"])),
            vl(&hex(&t["confirmed_transcript_hash"])),
            vl(&[]),
        ]
        .concat();
        Self {
            cs,
            group_id,
            epoch,
            context,
            signature_priv: hex(&t["signature_priv"]),
            signature_pub: hex(&t["signature_pub"]),
            encryption_secret: hex(&t["encryption_secret"]),
            sender_data_secret: hex(&t["sender_data_secret"]),
            membership_key: hex(&t["membership_key"]),
        }
    }

    /// `FramedContent` from member `LEAF`; `body` is already encoded.
    fn framed_content(&self, authenticated_data: &[u8], content_type: u8, body: &[u8]) -> Vec<u8> {
        [
            vl(&self.group_id),
            self.epoch.to_be_bytes().to_vec(),
            vec![SENDER_MEMBER],
            LEAF.to_be_bytes().to_vec(),
            vl(authenticated_data),
            vec![content_type],
            body.to_vec(),
        ]
        .concat()
    }

    /// `FramedContentTBS` for a member sender: it carries the group context.
    fn tbs(&self, wire_format: u16, framed_content: &[u8]) -> Vec<u8> {
        [
            VERSION.to_be_bytes().as_slice(),
            &wire_format.to_be_bytes(),
            framed_content,
            &self.context,
        ]
        .concat()
    }

    /// `FramedContentAuthData`: the signature, and the confirmation tag of a commit.
    fn auth(&self, wire_format: u16, framed_content: &[u8], confirmation_tag: Option<&[u8]>) -> Vec<u8> {
        let tbs = self.tbs(wire_format, framed_content);
        let sig = sign_with_label(
            &Crypto::new().unwrap(),
            self.cs,
            &self.signature_priv,
            "FramedContentTBS",
            &tbs,
        );
        let mut out = vl(&sig);
        if let Some(tag) = confirmation_tag {
            out.extend(vl(tag));
        }
        out
    }

    fn membership_tag(&self, c: &Crypto, tbs: &[u8], auth: &[u8]) -> Vec<u8> {
        let tbm = [tbs, auth].concat();
        c.hmac(self.cs.hash_algorithm(), &self.membership_key, &tbm)
            .unwrap()
            .as_slice()
            .to_vec()
    }

    /// Checks an `MLSMessage(PublicMessage)` from member `LEAF` whose body is
    /// `body` and returns its authenticated data and confirmation tag.
    fn open_public(&self, c: &Crypto, msg: &[u8], content_type: u8, body: &[u8]) -> (Vec<u8>, Option<Vec<u8>>) {
        let mut r = Reader(msg);
        assert_eq!(r.u16(), VERSION);
        assert_eq!(r.u16(), WIRE_PUBLIC);
        let content_start = r.0;
        assert_eq!(r.vl(), self.group_id);
        assert_eq!(r.u64(), self.epoch);
        assert_eq!(r.u8(), SENDER_MEMBER);
        assert_eq!(r.u32(), LEAF);
        let authenticated_data = r.vl();
        assert_eq!(r.u8(), content_type);
        r.expect(body);
        let framed_content = &content_start[..content_start.len() - r.0.len()];
        let auth_start = r.0;
        let signature = r.vl();
        let tag = (content_type == COMMIT).then(|| r.vl());
        let auth = &auth_start[..auth_start.len() - r.0.len()];
        let membership_tag = r.vl();
        r.end();

        let tbs = self.tbs(WIRE_PUBLIC, framed_content);
        assert!(
            verify_with_label(c, self.cs, &self.signature_pub, "FramedContentTBS", &tbs, &signature),
            "signature"
        );
        assert_eq!(membership_tag, self.membership_tag(c, &tbs, auth), "membership tag");
        (authenticated_data, tag)
    }

    fn seal_public(
        &self,
        c: &Crypto,
        authenticated_data: &[u8],
        content_type: u8,
        body: &[u8],
        tag: Option<&[u8]>,
    ) -> Vec<u8> {
        let framed_content = self.framed_content(authenticated_data, content_type, body);
        let auth = self.auth(WIRE_PUBLIC, &framed_content, tag);
        let tbs = self.tbs(WIRE_PUBLIC, &framed_content);
        let membership_tag = self.membership_tag(c, &tbs, &auth);
        [
            VERSION.to_be_bytes().as_slice(),
            &WIRE_PUBLIC.to_be_bytes(),
            &framed_content,
            &auth,
            &vl(&membership_tag),
        ]
        .concat()
    }

    /// Key and nonce of `LEAF`'s ratchet for `content_type` at `generation`.
    fn content_key(&self, c: &Crypto, content_type: u8, generation: u32) -> (Vec<u8>, Vec<u8>) {
        let leaf = leaf_secret(c, self.cs, &self.encryption_secret, 2, LEAF);
        let kind = if content_type == APPLICATION {
            "application"
        } else {
            "handshake"
        };
        ratchet(c, self.cs, &leaf, kind, generation)
    }

    fn sender_data_aad(&self, content_type: u8) -> Vec<u8> {
        [
            vl(&self.group_id),
            self.epoch.to_be_bytes().to_vec(),
            vec![content_type],
        ]
        .concat()
    }

    fn content_aad(&self, content_type: u8, authenticated_data: &[u8]) -> Vec<u8> {
        [
            vl(&self.group_id),
            self.epoch.to_be_bytes().to_vec(),
            vec![content_type],
            vl(authenticated_data),
        ]
        .concat()
    }

    /// Opens an `MLSMessage(PrivateMessage)` from member `LEAF` whose body
    /// must be `body`, and checks its signature.
    fn open_private(&self, c: &Crypto, msg: &[u8], content_type: u8, body: &[u8]) -> Opened {
        let cs = self.cs;
        let mut r = Reader(msg);
        assert_eq!(r.u16(), VERSION);
        assert_eq!(r.u16(), WIRE_PRIVATE);
        assert_eq!(r.vl(), self.group_id);
        assert_eq!(r.u64(), self.epoch);
        assert_eq!(r.u8(), content_type);
        let authenticated_data = r.vl();
        let encrypted_sender_data = r.vl();
        let ciphertext = r.vl();
        r.end();

        let (key, nonce) = sender_data_key_nonce(c, cs, &self.sender_data_secret, &ciphertext);
        let sender_data = c
            .aead_decrypt(
                cs.aead_algorithm(),
                &key,
                &encrypted_sender_data,
                &nonce,
                &self.sender_data_aad(content_type),
            )
            .unwrap();
        let mut s = Reader(&sender_data);
        assert_eq!(s.u32(), LEAF, "sender");
        let generation = s.u32();
        let reuse_guard: [u8; 4] = s.take(4).try_into().unwrap();
        s.end();

        let (key, mut nonce) = self.content_key(c, content_type, generation);
        for (n, g) in nonce.iter_mut().zip(reuse_guard) {
            *n ^= g;
        }
        let content = c
            .aead_decrypt(
                cs.aead_algorithm(),
                &key,
                &ciphertext,
                &nonce,
                &self.content_aad(content_type, &authenticated_data),
            )
            .unwrap();
        let mut p = Reader(&content);
        p.expect(body);
        let signature = p.vl();
        let tag = (content_type == COMMIT).then(|| p.vl());
        let padding = p.0.len();
        assert!(p.0.iter().all(|&b| b == 0), "padding must be zeros");

        let framed_content = self.framed_content(&authenticated_data, content_type, body);
        let tbs = self.tbs(WIRE_PRIVATE, &framed_content);
        assert!(
            verify_with_label(c, cs, &self.signature_pub, "FramedContentTBS", &tbs, &signature),
            "signature"
        );
        Opened {
            authenticated_data,
            generation,
            reuse_guard,
            tag,
            padding,
        }
    }

    fn seal_private(&self, c: &Crypto, content_type: u8, body: &[u8], how: &Opened) -> Vec<u8> {
        let cs = self.cs;
        let framed_content = self.framed_content(&how.authenticated_data, content_type, body);
        let auth = self.auth(WIRE_PRIVATE, &framed_content, how.tag.as_deref());
        let plaintext = [body, &auth, &vec![0; how.padding]].concat();
        let (key, mut nonce) = self.content_key(c, content_type, how.generation);
        for (n, g) in nonce.iter_mut().zip(how.reuse_guard) {
            *n ^= g;
        }
        let ciphertext = c
            .aead_encrypt(
                cs.aead_algorithm(),
                &key,
                &plaintext,
                &nonce,
                &self.content_aad(content_type, &how.authenticated_data),
            )
            .unwrap();
        let sender_data = [LEAF.to_be_bytes(), how.generation.to_be_bytes(), how.reuse_guard].concat();
        let (key, nonce) = sender_data_key_nonce(c, cs, &self.sender_data_secret, &ciphertext);
        let encrypted_sender_data = c
            .aead_encrypt(
                cs.aead_algorithm(),
                &key,
                &sender_data,
                &nonce,
                &self.sender_data_aad(content_type),
            )
            .unwrap();
        [
            VERSION.to_be_bytes().as_slice(),
            &WIRE_PRIVATE.to_be_bytes(),
            &vl(&self.group_id),
            &self.epoch.to_be_bytes(),
            &[content_type],
            &vl(&how.authenticated_data),
            &vl(&encrypted_sender_data),
            &vl(&ciphertext),
        ]
        .concat()
    }
}

/// What opening a private message revealed, to protect the same content again.
#[derive(Clone)]
struct Opened {
    authenticated_data: Vec<u8>,
    generation: u32,
    reuse_guard: [u8; 4],
    tag: Option<Vec<u8>>,
    padding: usize,
}

#[test]
fn message_protection() {
    let c = Crypto::new().unwrap();
    let mut checked = 0;
    for (cs, t) in cases("message-protection.json") {
        let group = Group::new(cs, &t);
        for (name, content_type, body) in [
            ("proposal", PROPOSAL, hex(&t["proposal"])),
            ("commit", COMMIT, hex(&t["commit"])),
            ("application", APPLICATION, vl(&hex(&t["application"]))),
        ] {
            if content_type != APPLICATION {
                // The PublicMessage verifies, and protecting its content again gives its bytes.
                let public = hex(&t[format!("{name}_pub")]);
                let (ad, tag) = group.open_public(&c, &public, content_type, &body);
                let ours = group.seal_public(&c, &ad, content_type, &body, tag.as_deref());
                assert_eq!(ours, public, "{cs:?} {name}: PublicMessage");
                group.open_public(&c, &ours, content_type, &body);
            }
            // The PrivateMessage opens, and protecting its content again gives its bytes.
            let private = hex(&t[format!("{name}_priv")]);
            let opened = group.open_private(&c, &private, content_type, &body);
            let ours = group.seal_private(&c, content_type, &body, &opened);
            assert_eq!(ours, private, "{cs:?} {name}: PrivateMessage");
            // Another generation and reuse guard: a different message that opens too.
            let other = Opened {
                generation: 0,
                reuse_guard: [0xa5, 0x5a, 0x0f, 0xf0],
                padding: 3,
                ..opened
            };
            let ours = group.seal_private(&c, content_type, &body, &other);
            assert_ne!(ours, private);
            let again = group.open_private(&c, &ours, content_type, &body);
            assert_eq!(
                (again.generation, again.reuse_guard, again.padding),
                (0, other.reuse_guard, 3)
            );
            // A flipped bit anywhere in the ciphertext fails.
            let mut bad = ours.clone();
            let last = bad.len() - 1;
            bad[last] ^= 1;
            let open = std::panic::AssertUnwindSafe(|| group.open_private(&c, &bad, content_type, &body));
            assert!(std::panic::catch_unwind(open).is_err());
            checked += 1;
        }
    }
    assert_eq!(checked, 6, "two suites, three messages each");
}
