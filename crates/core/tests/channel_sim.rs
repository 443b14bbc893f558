//! In-memory simulation of channels: no relay, no files, just the core.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use backchannel_core::channel::{
    key_package, validate_key_package, Channel, ChannelInfo, Provider, Received, Rejection, Suite,
};
use backchannel_core::identity::Identity;
use backchannel_core::mailbox::{MailboxAddress, MailboxKeys};
use backchannel_core::relay_address::RelayAddress;
use rand_core::OsRng;

struct Member {
    id: Identity,
    provider: Provider,
    mailbox: MailboxAddress,
    channel: Option<Channel>,
}

fn relay() -> RelayAddress {
    RelayAddress {
        pin: [0; 32],
        host: "127.0.0.1".into(),
        port: 1,
    }
}

fn member(name: &str) -> Member {
    Member {
        id: Identity::generate(name, &mut OsRng).unwrap(),
        provider: Provider::new().unwrap(),
        mailbox: MailboxKeys::generate(relay(), &mut OsRng).address.clone(),
        channel: None,
    }
}

fn founder(name: &str, suite: Suite) -> Member {
    let mut m = member(name);
    let info = ChannelInfo {
        name: "deal-room".into(),
        sequencer: MailboxKeys::generate(relay(), &mut OsRng).address.clone(),
        created_at: 1,
        disappear_after: 0,
        expires_at: 0,
    };
    m.channel = Some(Channel::create(&m.provider, &m.id, &info, &m.mailbox, suite, false).unwrap());
    m
}

/// `adder` admits `joiner`; every member in `others` processes the commit.
fn admit(adder: &mut Member, joiner: &mut Member, others: &mut [&mut Member], suite: Suite) {
    let kp = key_package(&joiner.provider, &joiner.id, &joiner.mailbox, suite).unwrap();
    let valid = validate_key_package(&adder.provider, &kp).unwrap();
    assert_eq!(valid.member.name, joiner.id.name());
    assert_eq!(valid.member.mailbox.as_ref(), Some(&joiner.mailbox));
    let ch = adder.channel.as_mut().unwrap();
    let out = ch.add(&adder.provider, &adder.id, vec![valid]).unwrap();
    ch.merge_pending(&adder.provider).unwrap();
    for o in others.iter_mut() {
        let r = o.channel.as_mut().unwrap().process(&o.provider, &out.commit).unwrap();
        assert!(matches!(r, Received::Commit { .. }));
    }
    let (ch, sender) = Channel::join(&joiner.provider, out.welcome.as_ref().unwrap()).unwrap();
    assert_eq!(sender.identity_key, adder.id.public_key());
    assert_eq!(ch.info().unwrap().name, "deal-room");
    joiner.channel = Some(ch);
}

/// Alice's channel with bob and carol in it, every member up to date.
fn trio(suite: Suite) -> (Member, Member, Member) {
    let mut alice = founder("alice", suite);
    let mut bob = member("bob");
    let mut carol = member("carol");
    admit(&mut alice, &mut bob, &mut [], suite);
    admit(&mut alice, &mut carol, &mut [&mut bob], suite);
    (alice, bob, carol)
}

fn say(from: &mut Member, text: &str) -> Vec<u8> {
    from.channel
        .as_mut()
        .unwrap()
        .encrypt(&from.provider, &from.id, text.as_bytes())
        .unwrap()
}

fn hear(to: &mut Member, bytes: &[u8]) -> Result<(String, String), Rejection> {
    match to.channel.as_mut().unwrap().process(&to.provider, bytes)? {
        Received::Application { sender, plaintext, .. } => Ok((sender.name, String::from_utf8(plaintext).unwrap())),
        other => panic!("expected an application message, got {other:?}"),
    }
}

#[test]
fn three_parties_talk_and_a_removed_member_reads_nothing_after() {
    for suite in [Suite::PostQuantum, Suite::Classical] {
        let (mut alice, mut bob, mut carol) = trio(suite);
        assert_eq!(alice.channel.as_ref().unwrap().members().len(), 3);

        let m = say(&mut bob, "hello from bob");
        assert_eq!(hear(&mut alice, &m).unwrap(), ("bob".into(), "hello from bob".into()));
        assert_eq!(hear(&mut carol, &m).unwrap(), ("bob".into(), "hello from bob".into()));
        // The same bytes again are a replay.
        assert!(hear(&mut alice, &m).is_err());

        // Alice removes carol.
        let fp = carol.id.fingerprint();
        let ch = alice.channel.as_mut().unwrap();
        let out = ch.remove(&alice.provider, &alice.id, &[fp]).unwrap();
        ch.merge_pending(&alice.provider).unwrap();
        bob.channel
            .as_mut()
            .unwrap()
            .process(&bob.provider, &out.commit)
            .unwrap();
        match carol
            .channel
            .as_mut()
            .unwrap()
            .process(&carol.provider, &out.commit)
            .unwrap()
        {
            Received::Commit { self_removed, .. } => assert!(self_removed),
            other => panic!("{other:?}"),
        }
        let secret = say(&mut alice, "after carol left");
        assert_eq!(hear(&mut bob, &secret).unwrap().1, "after carol left");
        assert!(
            hear(&mut carol, &secret).is_err(),
            "a removed member must not read new messages"
        );

        // Carol, with her old keys, cannot inject into the channel.
        let forged = carol
            .channel
            .as_mut()
            .unwrap()
            .encrypt(&carol.provider, &carol.id, b"planted");
        if let Ok(forged) = forged {
            assert!(hear(&mut bob, &forged).is_err());
        }
    }
}

#[test]
fn two_concurrent_commits_one_wins_and_the_other_retries() {
    let suite = Suite::Classical;
    let mut alice = founder("alice", suite);
    let mut bob = member("bob");
    admit(&mut alice, &mut bob, &mut [], suite);

    // Both stage a commit at the same epoch.
    let a = alice
        .channel
        .as_mut()
        .unwrap()
        .self_update(&alice.provider, &alice.id, None)
        .unwrap();
    let b = bob
        .channel
        .as_mut()
        .unwrap()
        .self_update(&bob.provider, &bob.id, None)
        .unwrap();
    assert_eq!(a.epoch, b.epoch);
    // The sequencer grants alice; bob discards his and processes alice's.
    alice.channel.as_mut().unwrap().merge_pending(&alice.provider).unwrap();
    bob.channel.as_mut().unwrap().discard_pending(&bob.provider).unwrap();
    bob.channel.as_mut().unwrap().process(&bob.provider, &a.commit).unwrap();
    // Bob retries at the next epoch.
    let b2 = bob
        .channel
        .as_mut()
        .unwrap()
        .self_update(&bob.provider, &bob.id, None)
        .unwrap();
    assert_eq!(b2.epoch, a.epoch + 1);
    bob.channel.as_mut().unwrap().merge_pending(&bob.provider).unwrap();
    alice
        .channel
        .as_mut()
        .unwrap()
        .process(&alice.provider, &b2.commit)
        .unwrap();
    // No fork: they still understand each other.
    let m = say(&mut alice, "still one channel");
    assert_eq!(hear(&mut bob, &m).unwrap().1, "still one channel");
}

#[test]
fn leave_is_a_proposal_that_another_member_commits() {
    let suite = Suite::Classical;
    let mut alice = founder("alice", suite);
    let mut bob = member("bob");
    admit(&mut alice, &mut bob, &mut [], suite);
    let p = bob.channel.as_mut().unwrap().leave(&bob.provider, &bob.id).unwrap();
    let r = alice.channel.as_mut().unwrap().process(&alice.provider, &p).unwrap();
    assert!(matches!(r, Received::Proposal { .. }));
    let ch = alice.channel.as_mut().unwrap();
    assert!(ch.has_pending_proposals());
    let out = ch.commit_pending(&alice.provider, &alice.id).unwrap();
    ch.merge_pending(&alice.provider).unwrap();
    assert_eq!(ch.members().len(), 1);
    let r = bob
        .channel
        .as_mut()
        .unwrap()
        .process(&bob.provider, &out.commit)
        .unwrap();
    assert!(matches!(r, Received::Commit { self_removed: true, .. }));
}

#[test]
fn state_survives_a_provider_snapshot() {
    let suite = Suite::PostQuantum;
    let mut alice = founder("alice", suite);
    let mut bob = member("bob");
    admit(&mut alice, &mut bob, &mut [], suite);
    let gid = bob.channel.as_ref().unwrap().group_id();
    let snap = bob.provider.snapshot();
    bob.provider = Provider::from_snapshot(snap).unwrap();
    bob.channel = Channel::load(&bob.provider, &gid).unwrap();
    let m = say(&mut alice, "after restart");
    assert_eq!(hear(&mut bob, &m).unwrap().1, "after restart");
}

#[test]
fn a_message_that_overtakes_its_commit_is_reported_as_future_and_reads_after_the_commit() {
    let suite = Suite::Classical;
    let mut alice = founder("alice", suite);
    let mut bob = member("bob");
    admit(&mut alice, &mut bob, &mut [], suite);
    // Alice updates her keys (epoch + 1) and speaks in the new epoch; bob gets the message first.
    let ch = alice.channel.as_mut().unwrap();
    let out = ch.self_update(&alice.provider, &alice.id, None).unwrap();
    ch.merge_pending(&alice.provider).unwrap();
    let early = say(&mut alice, "after the update");
    let bob_epoch = bob.channel.as_ref().unwrap().epoch();
    assert_eq!(hear(&mut bob, &early), Err(Rejection::FutureEpoch(bob_epoch + 1)));
    // Nothing was consumed: once the commit is in, the same bytes read.
    bob.channel
        .as_mut()
        .unwrap()
        .process(&bob.provider, &out.commit)
        .unwrap();
    assert_eq!(hear(&mut bob, &early), Ok(("alice".into(), "after the update".into())));
}

#[test]
fn a_message_sent_before_its_sender_was_removed_is_refused_after() {
    let suite = Suite::Classical;
    let (mut alice, mut bob, mut carol) = trio(suite);
    let before = say(&mut carol, "sent before my removal");
    let still_fine = say(&mut bob, "sent before carol's removal");
    let ch = alice.channel.as_mut().unwrap();
    let out = ch
        .remove(&alice.provider, &alice.id, &[carol.id.fingerprint()])
        .unwrap();
    ch.merge_pending(&alice.provider).unwrap();
    bob.channel
        .as_mut()
        .unwrap()
        .process(&bob.provider, &out.commit)
        .unwrap();
    // The past epoch still decrypts, but its sender is no longer a member.
    assert_eq!(hear(&mut alice, &before), Err(Rejection::RemovedMember));
    assert_eq!(hear(&mut bob, &before), Err(Rejection::RemovedMember));
    assert_eq!(
        hear(&mut alice, &still_fine),
        Ok(("bob".into(), "sent before carol's removal".into()))
    );
}

/// The channel code (`backchannel verify CHANNEL`): the same for every member in one epoch,
/// new with each epoch, and different on the two sides of a split channel at the same epoch
/// number (here two members each merged their own commit, as a relay or member that
/// withholds the sequencer's verdict could make them do).
#[test]
fn the_channel_code_is_shared_by_one_channel_and_differs_across_a_split() {
    let suite = Suite::Classical;
    let (mut alice, mut bob, mut carol) = trio(suite);
    let code = |m: &Member| m.channel.as_ref().unwrap().channel_code();
    let epoch = |m: &Member| m.channel.as_ref().unwrap().epoch();
    let c = code(&alice);
    assert_eq!((code(&bob), code(&carol)), (c.clone(), c.clone()));
    let groups: Vec<&str> = c.split(' ').collect();
    assert_eq!(groups.len(), 6, "{c}");
    assert!(groups
        .iter()
        .all(|g| g.len() == 5 && g.bytes().all(|b| b.is_ascii_digit())));

    // Bob and carol commit at the same epoch; each merges its own; alice follows bob.
    let b = bob
        .channel
        .as_mut()
        .unwrap()
        .self_update(&bob.provider, &bob.id, None)
        .unwrap();
    carol
        .channel
        .as_mut()
        .unwrap()
        .self_update(&carol.provider, &carol.id, None)
        .unwrap();
    bob.channel.as_mut().unwrap().merge_pending(&bob.provider).unwrap();
    carol.channel.as_mut().unwrap().merge_pending(&carol.provider).unwrap();
    alice
        .channel
        .as_mut()
        .unwrap()
        .process(&alice.provider, &b.commit)
        .unwrap();
    assert_eq!(
        (epoch(&alice), epoch(&bob), epoch(&carol)),
        (b.epoch + 1, b.epoch + 1, b.epoch + 1)
    );
    assert_eq!(code(&alice), code(&bob));
    assert_ne!(code(&alice), c, "a new epoch, a new code");
    assert_ne!(code(&carol), code(&alice), "the split shows");
}
