//! Invite codes read aloud (issue 18, point 1): `7-orbit-velvet-harbor`, a nameplate number
//! the relay allocated, then [`WORDS_PER_CODE`] words of the BIP-39 English list (2,048
//! words, each known by its first four letters), 33 bits of secret. Typing is forgiving:
//! any case, any of `-`, space, `_` or `.` between the parts, and any prefix of a word that
//! names one word only.
//!
//! The code protects an exchange between an inviter and a joiner, through a relay that
//! only passes messages on the nameplate and is treated as an online guesser:
//!
//! ```text
//! password = the code's words, canonical ("orbit-velvet-harbor")
//! identity = "backchannel/v1/code" || relay PIN (32)
//! 1. both:    SPAKE2 (RFC 9382, Ed25519 group, symmetric) message, 33 bytes -> K (32)
//! 2. joiner:  X-Wing key pair; sends pk (1216) || about || HMAC-SHA256(K, "joiner" || t ||
//!             pk || about), where t = the two SPAKE2 messages, the inviter's first, and
//!             about = what the joiner tells the inviter (its identity key and where to answer)
//! 3. inviter: checks the MAC (a wrong one: the code was wrong, someone guessed); HPKE
//!             (X-Wing, HKDF-SHA256, ChaCha20-Poly1305, base mode) to pk, exporting ss;
//!             key = HKDF-SHA256(K || ss, "backchannel/v1/code key" || t || pk || enc);
//!             sends enc || ChaCha20-Poly1305(key, nonce 0, invite, aad = t)
//! 4. joiner:  the same key; a ciphertext that does not open: the code was wrong
//! both show:  the confirmation (two words of HKDF(key, "confirmation")), and each other's
//!             fingerprint (the invite names the inviter's; the join request the joiner's)
//! ```
//!
//! A relay that guesses gets one try per code, and a wrong guess ends the exchange on the
//! side that sees it ("someone tried a wrong code"). A recording of the exchange and a
//! later quantum computer give SPAKE2's K, not the X-Wing secret: the invite stays sealed.
//! SPAKE2 is RustCrypto's `spake2` crate, the one magic-wormhole.rs uses (RFC 9382; no
//! published audit of the crate was found, which the closing note of this step says). CPace
//! has no maintained crate as widely used.
//!
//! The nameplate's number is not in the password: the relay chooses it when the inviter
//! hands over its first message (the nameplate's record), so the inviter's SPAKE2 message
//! cannot depend on it. The words are the secret; a relay that sends a joiner to another
//! nameplate's exchange meets other words, and the exchange fails as for a guess.

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Nonce};
use hkdf::Hkdf;
use hmac::{Hmac, Mac};
use hpke_rs::HpkePublicKey;
use rand_core::CryptoRngCore;
use sha2::Sha256;
use spake2::{Ed25519Group, Identity, Password, Spake2};
use thiserror::Error;
use zeroize::Zeroizing;

use crate::codec::{DecodeError, Reader, Writer};
use crate::drop::{hpke, DropKeys, OWNER_KEY_LEN};
use crate::mailbox::MailboxAddress;

/// Words after the nameplate.
pub const WORDS_PER_CODE: usize = 3;
/// The largest nameplate a code may name.
pub const MAX_NAMEPLATE: u32 = 999_999;
/// Bytes of a SPAKE2 message.
pub const PAKE_MESSAGE_LEN: usize = 33;

const IDENTITY: &[u8] = b"backchannel/v1/code";
const KEY_INFO: &[u8] = b"backchannel/v1/code key";
const HPKE_INFO: &[u8] = b"backchannel/v1/code hpke";
const EXPORT_CONTEXT: &[u8] = b"backchannel/v1/code export";

/// The word list: BIP-39 English.
pub fn words() -> &'static [&'static str; 2048] {
    bip39::Language::English.word_list()
}

/// A code: its nameplate and its words (indexes into [`words`]).
#[derive(Clone, PartialEq, Eq)]
pub struct Code {
    /// The nameplate the relay allocated.
    pub nameplate: u32,
    words: [u16; WORDS_PER_CODE],
}

impl std::fmt::Debug for Code {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The words are the secret.
        write!(f, "Code({}-…)", self.nameplate)
    }
}

/// A typed code that is not one.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum CodeError {
    /// No nameplate number first.
    #[error("a code starts with its number, like 7-orbit-velvet-harbor")]
    NoNameplate,
    /// Too few or too many words.
    #[error("a code has a number and {WORDS_PER_CODE} words, like 7-orbit-velvet-harbor")]
    WordCount,
    /// A word that is in no word of the list, or the start of several.
    #[error("\"{0}\" is not a word of the code list, or is the start of more than one")]
    Word(String),
}

impl Code {
    /// A fresh code on `nameplate`.
    pub fn random(nameplate: u32, rng: &mut impl CryptoRngCore) -> Self {
        let mut words = [0u16; WORDS_PER_CODE];
        for w in &mut words {
            let mut b = [0u8; 2];
            rng.fill_bytes(&mut b);
            *w = u16::from_be_bytes(b) & 0x07ff;
        }
        Self { nameplate, words }
    }

    /// Reads a typed code: any case, `-`, spaces, `_` or `.` between the parts, and any
    /// prefix of a word that names one word only.
    pub fn parse(typed: &str) -> Result<Self, CodeError> {
        let mut parts = typed
            .split(|c: char| c == '-' || c == '_' || c == '.' || c.is_whitespace())
            .filter(|p| !p.is_empty());
        let nameplate = parts
            .next()
            .and_then(|n| n.parse::<u32>().ok())
            .filter(|n| (1..=MAX_NAMEPLATE).contains(n))
            .ok_or(CodeError::NoNameplate)?;
        let typed_words: Vec<&str> = parts.collect();
        if typed_words.len() != WORDS_PER_CODE {
            return Err(CodeError::WordCount);
        }
        let mut words = [0u16; WORDS_PER_CODE];
        for (slot, w) in words.iter_mut().zip(typed_words) {
            *slot = find(w).ok_or_else(|| CodeError::Word(w.to_string()))?;
        }
        Ok(Self { nameplate, words })
    }

    /// The code as it is read aloud: `7-orbit-velvet-harbor`.
    pub fn text(&self) -> Zeroizing<String> {
        let mut s = Zeroizing::new(self.nameplate.to_string());
        s.push('-');
        s.push_str(&self.words_text());
        s
    }

    /// The words alone, the secret: `orbit-velvet-harbor`.
    fn words_text(&self) -> Zeroizing<String> {
        let list = words();
        let mut s = Zeroizing::new(String::new());
        for (i, &w) in self.words.iter().enumerate() {
            if i > 0 {
                s.push('-');
            }
            s.push_str(list[usize::from(w)]);
        }
        s
    }
}

/// The word a typed one names: itself, or the one word it is a prefix of.
fn find(typed: &str) -> Option<u16> {
    let lower = typed.to_ascii_lowercase();
    let lang = bip39::Language::English;
    if let Some(i) = lang.find_word(&lower) {
        return Some(i);
    }
    match lang.words_by_prefix(&lower) {
        [one] => lang.find_word(one),
        _ => None,
    }
}

/// The exchange failed.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum ExchangeError {
    /// The other side (or the relay) does not hold this code: the MAC or the seal is wrong.
    #[error("someone tried a wrong code: this code is used up; make a new one")]
    WrongCode,
    /// A message of the wrong shape.
    #[error("a message of the code exchange was malformed")]
    Malformed,
    /// A primitive failed.
    #[error("the code exchange's cryptography failed")]
    Crypto,
}

fn spake(code: &Code, pin: &[u8; 32], rng: &mut impl CryptoRngCore) -> (Spake2<Ed25519Group>, Vec<u8>) {
    let mut id = IDENTITY.to_vec();
    id.extend_from_slice(pin);
    let password = Password::new(code.words_text().as_bytes());
    Spake2::<Ed25519Group>::start_symmetric_with_rng(&password, &Identity::new(&id), rng)
}

/// The transcript `t`: the inviter's SPAKE2 message, then the joiner's.
fn transcript(inviter: &[u8], joiner: &[u8]) -> Vec<u8> {
    let mut t = Vec::with_capacity(inviter.len() + joiner.len());
    t.extend_from_slice(inviter);
    t.extend_from_slice(joiner);
    t
}

fn mac(k: &[u8], parts: &[&[u8]]) -> Result<Hmac<Sha256>, ExchangeError> {
    let mut m = <Hmac<Sha256> as Mac>::new_from_slice(k).map_err(|_| ExchangeError::Crypto)?;
    for p in parts {
        m.update(p);
    }
    Ok(m)
}

/// The invite's key, and the confirmation both sides show.
fn invite_key(
    k: &[u8],
    ss: &[u8],
    t: &[u8],
    pk: &[u8],
    enc: &[u8],
) -> Result<(Zeroizing<[u8; 32]>, String), ExchangeError> {
    let mut ikm = Zeroizing::new(k.to_vec());
    ikm.extend_from_slice(ss);
    let hk = Hkdf::<Sha256>::new(None, &ikm);
    let mut key = Zeroizing::new([0u8; 32]);
    let info = [KEY_INFO, t, pk, enc].concat();
    hk.expand(&info, &mut key[..]).map_err(|_| ExchangeError::Crypto)?;
    let mut c = [0u8; 4];
    Hkdf::<Sha256>::from_prk(&key[..])
        .map_err(|_| ExchangeError::Crypto)?
        .expand(b"confirmation", &mut c)
        .map_err(|_| ExchangeError::Crypto)?;
    let list = words();
    let a = usize::from(u16::from_be_bytes([c[0], c[1]]) & 0x07ff);
    let b = usize::from(u16::from_be_bytes([c[2], c[3]]) & 0x07ff);
    Ok((key, format!("{} {}", list[a], list[b])))
}

/// The inviter's side, after its SPAKE2 message was sent.
pub struct Inviter {
    spake: Spake2<Ed25519Group>,
    mine: Vec<u8>,
}

impl Inviter {
    /// Starts: returns the inviter and its SPAKE2 message.
    pub fn start(code: &Code, pin: &[u8; 32], rng: &mut impl CryptoRngCore) -> (Self, Vec<u8>) {
        let (spake, mine) = spake(code, pin, rng);
        (
            Self {
                spake,
                mine: mine.clone(),
            },
            mine,
        )
    }

    /// Takes the joiner's SPAKE2 message and its key message (attacker input), and seals
    /// `invite` for it. Returns what to send, the confirmation to show, and what the joiner
    /// said about itself (authenticated by the code).
    pub fn finish(self, theirs: &[u8], joiner_key: &[u8], invite: &[u8]) -> Result<Finished, ExchangeError> {
        if theirs.len() != PAKE_MESSAGE_LEN || joiner_key.len() < OWNER_KEY_LEN + 32 {
            return Err(ExchangeError::Malformed);
        }
        let k = Zeroizing::new(self.spake.finish(theirs).map_err(|_| ExchangeError::Malformed)?);
        let t = transcript(&self.mine, theirs);
        let (pk, rest) = joiner_key.split_at(OWNER_KEY_LEN);
        let (about, tag) = rest.split_at(rest.len() - 32);
        mac(&k, &[b"joiner", &t, pk, about])?
            .verify_slice(tag)
            .map_err(|_| ExchangeError::WrongCode)?;
        let (enc, ctx) = hpke()
            .setup_sender(&HpkePublicKey::new(pk.to_vec()), HPKE_INFO, None, None, None)
            .map_err(|_| ExchangeError::Malformed)?;
        let ss = Zeroizing::new(ctx.export(EXPORT_CONTEXT, 32).map_err(|_| ExchangeError::Crypto)?);
        let (key, confirmation) = invite_key(&k, &ss, &t, pk, &enc)?;
        let sealed = ChaCha20Poly1305::new_from_slice(&key[..])
            .map_err(|_| ExchangeError::Crypto)?
            .encrypt(Nonce::from_slice(&[0; 12]), Payload { msg: invite, aad: &t })
            .map_err(|_| ExchangeError::Crypto)?;
        let mut out = u16::try_from(enc.len())
            .map_err(|_| ExchangeError::Crypto)?
            .to_be_bytes()
            .to_vec();
        out.extend_from_slice(&enc);
        out.extend_from_slice(&sealed);
        Ok(Finished {
            answer: out,
            confirmation,
            about: about.to_vec(),
        })
    }
}

/// The inviter's side done: what to send the joiner, and what to show.
#[derive(Debug)]
pub struct Finished {
    /// The answer for the joiner (the sealed invite).
    pub answer: Vec<u8>,
    /// The two words both sides show.
    pub confirmation: String,
    /// What the joiner said about itself, authenticated by the code.
    pub about: Vec<u8>,
}

/// The joiner's side.
pub struct Joiner {
    k: Zeroizing<Vec<u8>>,
    t: Vec<u8>,
    keys: DropKeys,
}

impl Joiner {
    /// Takes the inviter's SPAKE2 message (attacker input); returns the joiner, its SPAKE2
    /// message and its key message (an X-Wing public key, `about`, and their MAC).
    pub fn start(
        code: &Code,
        pin: &[u8; 32],
        theirs: &[u8],
        about: &[u8],
        rng: &mut impl CryptoRngCore,
    ) -> Result<(Self, Vec<u8>, Vec<u8>), ExchangeError> {
        if theirs.len() != PAKE_MESSAGE_LEN {
            return Err(ExchangeError::Malformed);
        }
        let (spake, mine) = spake(code, pin, rng);
        let k = Zeroizing::new(spake.finish(theirs).map_err(|_| ExchangeError::Malformed)?);
        let t = transcript(theirs, &mine);
        let keys = DropKeys::generate(rng).map_err(|_| ExchangeError::Crypto)?;
        let mut key_message = keys.public().to_vec();
        key_message.extend_from_slice(about);
        let tag = mac(&k, &[b"joiner", &t, keys.public(), about])?.finalize().into_bytes();
        key_message.extend_from_slice(&tag);
        Ok((Self { k, t, keys }, mine, key_message))
    }

    /// Opens the inviter's answer (attacker input): the invite, and the confirmation to show.
    pub fn finish(self, answer: &[u8]) -> Result<(Zeroizing<Vec<u8>>, String), ExchangeError> {
        let (len, rest) = answer.split_at_checked(2).ok_or(ExchangeError::Malformed)?;
        let len = usize::from(u16::from_be_bytes([len[0], len[1]]));
        let (enc, sealed) = rest.split_at_checked(len).ok_or(ExchangeError::Malformed)?;
        let (secret, _) = self.keys.pair().map_err(|_| ExchangeError::Crypto)?;
        let ctx = hpke()
            .setup_receiver(enc, &secret, HPKE_INFO, None, None, None)
            .map_err(|_| ExchangeError::WrongCode)?;
        let ss = Zeroizing::new(ctx.export(EXPORT_CONTEXT, 32).map_err(|_| ExchangeError::Crypto)?);
        let (key, confirmation) = invite_key(&self.k, &ss, &self.t, self.keys.public(), enc)?;
        let invite = ChaCha20Poly1305::new_from_slice(&key[..])
            .map_err(|_| ExchangeError::Crypto)?
            .decrypt(
                Nonce::from_slice(&[0; 12]),
                Payload {
                    msg: sealed,
                    aad: &self.t,
                },
            )
            .map_err(|_| ExchangeError::WrongCode)?;
        Ok((Zeroizing::new(invite), confirmation))
    }
}

// ---- the messages of the exchange, as they travel ----

const RECORD_VERSION: u8 = 1;
const HELLO_TAG: u8 = 1;
const ANSWER_TAG: u8 = 2;
const REFUSED_TAG: u8 = 3;

/// What a nameplate holds (`frame::Request::Nameplate`): where the joiner writes, and the
/// inviter's SPAKE2 message.
///
/// ```text
/// record = version (1) = 1 | rendezvous mailbox address | SPAKE2 message (33)
/// ```
#[derive(Debug, Clone)]
pub struct Record {
    /// The inviter's mailbox for this exchange.
    pub rendezvous: MailboxAddress,
    /// The inviter's SPAKE2 message.
    pub pake: [u8; PAKE_MESSAGE_LEN],
}

impl Record {
    /// The binary form.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut w = Writer::new();
        w.u8(RECORD_VERSION);
        self.rendezvous.encode(&mut w);
        w.put(&self.pake);
        w.into_vec()
    }

    /// Reads a record (attacker input: the relay hands it over).
    pub fn from_bytes(b: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(b);
        if r.u8()? != RECORD_VERSION {
            return Err(DecodeError::Invalid("code record version"));
        }
        let rendezvous = MailboxAddress::decode(&mut r)?;
        let pake = r.array()?;
        r.finish()?;
        Ok(Self { rendezvous, pake })
    }
}

/// What the joiner tells the inviter about itself (the `about` of [`Joiner::start`]).
///
/// ```text
/// about = identity key (32) | name (u16 length, UTF-8) | reply mailbox address
/// ```
#[derive(Debug, Clone)]
pub struct About {
    /// The joiner's identity key.
    pub identity_key: [u8; 32],
    /// The name the joiner chose (from the network: escape before showing).
    pub name: String,
    /// Where the inviter answers.
    pub reply: MailboxAddress,
}

impl About {
    /// The binary form.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut w = Writer::new();
        w.put(&self.identity_key).bytes16(self.name.as_bytes());
        self.reply.encode(&mut w);
        w.into_vec()
    }

    /// Reads it (attacker input).
    pub fn from_bytes(b: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(b);
        let identity_key = r.array()?;
        let name = r.string16()?;
        let reply = MailboxAddress::decode(&mut r)?;
        r.finish()?;
        Ok(Self {
            identity_key,
            name,
            reply,
        })
    }

    /// Where to answer, read from a key message whose MAC has not been (or could not be)
    /// checked: for telling a wrong joiner that its code was refused, nothing else.
    pub fn unchecked_reply(key_message: &[u8]) -> Option<MailboxAddress> {
        let rest = key_message.get(OWNER_KEY_LEN..key_message.len().checked_sub(32)?)?;
        About::from_bytes(rest).ok().map(|a| a.reply)
    }
}

/// One message of the exchange after the record, in an envelope of kind
/// `PayloadKind::Code`.
///
/// ```text
/// message = 1 | SPAKE2 message (33) | key message     (joiner -> inviter)
///         | 2 | answer                                (inviter -> joiner: the sealed invite)
///         | 3                                         (inviter -> joiner: the code was wrong)
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// The joiner's SPAKE2 message and key message.
    Hello {
        /// SPAKE2 message.
        pake: [u8; PAKE_MESSAGE_LEN],
        /// X-Wing key, about, MAC.
        key_message: Vec<u8>,
    },
    /// The inviter's answer ([`Finished::answer`]).
    Answer(Vec<u8>),
    /// The inviter refused: the code the joiner used was not the inviter's.
    Refused,
}

impl Message {
    /// The binary form.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut w = Writer::new();
        match self {
            Message::Hello { pake, key_message } => {
                w.u8(HELLO_TAG).put(pake).put(key_message);
            }
            Message::Answer(a) => {
                w.u8(ANSWER_TAG).put(a);
            }
            Message::Refused => {
                w.u8(REFUSED_TAG);
            }
        }
        w.into_vec()
    }

    /// Reads one (attacker input).
    pub fn from_bytes(b: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(b);
        let m = match r.u8()? {
            HELLO_TAG => Message::Hello {
                pake: r.array()?,
                key_message: r.take(r.remaining())?.to_vec(),
            },
            ANSWER_TAG => Message::Answer(r.take(r.remaining())?.to_vec()),
            REFUSED_TAG => Message::Refused,
            _ => return Err(DecodeError::Invalid("code message")),
        };
        r.finish()?;
        Ok(m)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use rand_core::OsRng;

    const PIN: [u8; 32] = [9; 32];

    /// What the inviter sends (or why not), and the joiner waiting for it.
    type Exchanged = (Result<Finished, ExchangeError>, Option<Joiner>);

    fn exchange(inviter_code: &Code, joiner_code: &Code) -> Exchanged {
        let (inviter, m1) = Inviter::start(inviter_code, &PIN, &mut OsRng);
        let (joiner, m2, key_message) = Joiner::start(joiner_code, &PIN, &m1, b"joiner's key", &mut OsRng).unwrap();
        (inviter.finish(&m2, &key_message, b"bc-invite:the invite"), Some(joiner))
    }

    #[test]
    fn the_right_code_carries_the_invite_and_both_sides_show_the_same_confirmation() {
        let code = Code::random(7, &mut OsRng);
        let (sent, joiner) = exchange(&code, &code);
        let Finished {
            answer,
            confirmation: shown_by_inviter,
            about,
        } = sent.unwrap();
        assert_eq!(about, b"joiner's key");
        let (invite, shown_by_joiner) = joiner.unwrap().finish(&answer).unwrap();
        assert_eq!(&invite[..], b"bc-invite:the invite");
        assert_eq!(shown_by_inviter, shown_by_joiner);
        assert_eq!(shown_by_joiner.split(' ').count(), 2);
    }

    /// A joiner with a wrong code is refused by the inviter (the MAC), and learns nothing:
    /// it gets no answer. One word wrong is enough.
    #[test]
    fn a_wrong_code_is_refused_by_the_side_that_sees_it() {
        let code = Code::random(7, &mut OsRng);
        let mut wrong = code.clone();
        wrong.words[2] ^= 1;
        let (sent, _) = exchange(&code, &wrong);
        assert_eq!(sent.err(), Some(ExchangeError::WrongCode));
        // What the joiner says about itself is bound by the MAC.
        let (inviter, m1) = Inviter::start(&code, &PIN, &mut OsRng);
        let (_, m2, mut key_message) = Joiner::start(&code, &PIN, &m1, b"mine", &mut OsRng).unwrap();
        key_message[OWNER_KEY_LEN] ^= 1;
        assert_eq!(
            inviter.finish(&m2, &key_message, b"x").err(),
            Some(ExchangeError::WrongCode)
        );
    }

    /// A relay in the middle without the code: it can neither pass its own key off as the
    /// joiner's (the MAC), nor answer the joiner (the seal does not open).
    #[test]
    fn a_relay_without_the_code_cannot_take_either_place() {
        let code = Code::random(3, &mut OsRng);
        let guess = Code::random(3, &mut OsRng);
        // Toward the inviter: the relay plays a joiner with its guess.
        let (inviter, m1) = Inviter::start(&code, &PIN, &mut OsRng);
        let (_, m2, key_message) = Joiner::start(&guess, &PIN, &m1, b"", &mut OsRng).unwrap();
        assert_eq!(
            inviter.finish(&m2, &key_message, b"x").err(),
            Some(ExchangeError::WrongCode)
        );
        // Toward the joiner: the relay plays an inviter with its guess.
        let (fake, m1) = Inviter::start(&guess, &PIN, &mut OsRng);
        let (joiner, m2, key_message) = Joiner::start(&code, &PIN, &m1, b"", &mut OsRng).unwrap();
        assert!(
            fake.finish(&m2, &key_message, b"x").is_err(),
            "its guess does not match the joiner's"
        );
        let mut forged = vec![0, 4];
        forged.extend_from_slice(&[1; 64]);
        assert!(matches!(
            joiner.finish(&forged),
            Err(ExchangeError::WrongCode | ExchangeError::Malformed)
        ));
    }

    #[test]
    fn typing_is_forgiving_and_a_code_reads_back() {
        let code = Code::random(42, &mut OsRng);
        let text = code.text();
        assert_eq!(Code::parse(&text), Ok(code.clone()));
        let shouted = text.to_uppercase().replace('-', " ");
        assert_eq!(Code::parse(&shouted), Ok(code.clone()));
        // Four letters name every word of the list.
        let short: Vec<String> = text
            .split('-')
            .enumerate()
            .map(|(i, p)| {
                if i == 0 {
                    p.to_string()
                } else {
                    p.chars().take(4).collect()
                }
            })
            .collect();
        assert_eq!(Code::parse(&short.join(" _ ")), Ok(code));
        assert_eq!(Code::parse("orbit-velvet-harbor"), Err(CodeError::NoNameplate));
        assert_eq!(Code::parse("7-orbit-velvet"), Err(CodeError::WordCount));
        assert!(matches!(Code::parse("7-ab-velvet-harbor"), Err(CodeError::Word(_))));
        assert!(matches!(Code::parse("7-zzzz-velvet-harbor"), Err(CodeError::Word(_))));
    }

    #[test]
    fn the_list_has_2048_words_each_known_by_four_letters() {
        let list = words();
        let mut prefixes: Vec<String> = list.iter().map(|w| w.chars().take(4).collect()).collect();
        prefixes.sort();
        prefixes.dedup();
        assert_eq!(prefixes.len(), 2048);
        assert!(format!("{:?}", Code::random(5, &mut OsRng)).starts_with("Code(5-"));
    }

    proptest::proptest! {
        #[test]
        fn typed_garbage_never_panics(s in ".{0,80}") {
            let _ = Code::parse(&s);
        }

        #[test]
        fn garbage_messages_never_panic_and_what_decodes_reads_back(m in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..1600)) {
            if let Ok(r) = Record::from_bytes(&m) {
                proptest::prop_assert_eq!(r.to_bytes(), m.clone());
            }
            if let Ok(a) = About::from_bytes(&m) {
                proptest::prop_assert_eq!(a.to_bytes(), m.clone());
            }
            if let Ok(x) = Message::from_bytes(&m) {
                proptest::prop_assert_eq!(x.to_bytes(), m.clone());
            }
            let _ = About::unchecked_reply(&m);
        }

        #[test]
        fn hostile_messages_never_panic(m in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..1400)) {
            let code = Code::random(1, &mut OsRng);
            let (inviter, m1) = Inviter::start(&code, &PIN, &mut OsRng);
            let _ = inviter.finish(&m[..m.len().min(33)], &m, b"x");
            if let Ok((joiner, _, _)) = Joiner::start(&code, &PIN, &m1, &m, &mut OsRng) {
                let _ = joiner.finish(&m);
            }
            let _ = Joiner::start(&code, &PIN, &m, b"", &mut OsRng);
        }
    }
}
