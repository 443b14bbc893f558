//! Channels and their members: `channel new`, `invite`, `join`, `channels`,
//! `members`, `verify`, `remove`, `leave`, `close`, `update`, and `debug mailbox`.

use std::time::Duration;

use backchannel_client::core_types::Suite;
use backchannel_client::engine::Lifetime;

use super::Context;
use crate::args::{
    AdminArgs, ChannelArg, ChannelNewArgs, ChannelsArgs, InviteArgs, JoinArgs, MemberArgs, MembersArgs, Span,
    VerifyArgs, WhoArgs,
};
use crate::error::CliError;
use crate::output::{escape_controls, show_duration};

/// `channel new`.
pub async fn new(a: &ChannelNewArgs, cx: &mut Context<'_>) -> Result<(), CliError> {
    let suite = if a.classical {
        Suite::Classical
    } else {
        Suite::PostQuantum
    };
    let lifetime = Lifetime {
        disappear: a.disappear.map(|d| d.0),
        expires: a.expires.map(|d| d.0),
    };
    let channel = &a.channel;
    cx.engine
        .channel_new(channel, suite, lifetime, a.members_invite, a.approve)
        .await?;
    cx.out.line(format!("channel {channel} created; you are its admin"));
    if a.members_invite {
        cx.out.line("every member may invite");
    }
    if a.approve {
        cx.out
            .line("everyone an invite brings waits for approval (`backchannel pending`, `admit`, `refuse`)");
    }
    if let Some(Span(d)) = a.disappear {
        cx.out.line(format!(
            "messages disappear from every member's device {} after they are sent",
            show_duration(d)
        ));
    }
    if let Some(Span(d)) = a.expires {
        cx.out
            .line(format!("the channel closes on its own in {}", show_duration(d)));
    }
    Ok(())
}

/// `invite`: the invite on stdout, and with `--qr` drawn on stderr. With `--code`, the code
/// on stdout, then (once the joiner proved it) the confirmation, the joiner, and its
/// admission.
pub async fn invite(a: &InviteArgs, cx: &mut Context<'_>) -> Result<(), CliError> {
    let Span(expires) = a.expires;
    if a.code {
        return invite_code(a, cx).await;
    }
    let invite = cx.engine.invite(&a.channel, a.uses, expires, a.approve).await?;
    cx.out.line(&invite);
    if a.qr {
        if let Some(art) = crate::output::qr(&invite.to_uppercase()) {
            cx.out.eline(art);
        }
    }
    Ok(())
}

/// `invite --code`.
async fn invite_code(a: &InviteArgs, cx: &mut Context<'_>) -> Result<(), CliError> {
    let started = std::time::Instant::now();
    let wait = Duration::from_secs(a.wait);
    let code = cx.engine.code_invite(&a.channel, a.expires.0, a.approve).await?;
    cx.out.line(code.text().as_str());
    cx.out.eline(format!(
        "read this code to the one person you invite; they run `backchannel join CODE` (waiting up to {})",
        show_duration(wait)
    ));
    cx.out.flush();
    let them = cx.engine.code_answer(code, wait).await?;
    cx.out.line(format!(
        "confirmation: {} (the joiner must see the same two words)",
        them.confirmation
    ));
    cx.out
        .line(format!("joiner: {} {}", escape_controls(&them.name), them.fingerprint));
    cx.out.flush();
    if a.approve {
        cx.out.eline(format!(
            "they wait for your approval once their request arrives: `backchannel admit {} {}`",
            a.channel, them.fingerprint
        ));
        return Ok(());
    }
    let left = wait.saturating_sub(started.elapsed());
    match cx.engine.await_member(&a.channel, &them.fingerprint, left).await? {
        Some(name) => cx.out.line(format!("admitted {}", escape_controls(&name))),
        None => cx
            .out
            .eline("the joiner holds the invite but its request has not arrived yet; your next command admits it"),
    }
    Ok(())
}

/// How long `join CODE` waits to be admitted when `--wait` is not given: the inviter's
/// `invite --code` is waiting to admit.
const CODE_JOIN_WAIT: u64 = 60;

/// Whether what was typed to `join` is a code rather than an invite line: it starts with
/// the nameplate's number.
fn is_code(typed: &str) -> bool {
    typed.trim_start().starts_with(|c: char| c.is_ascii_digit())
}

/// `join`: an invite line, or a code (the exchange first, then the join as with a line).
pub async fn join(a: &JoinArgs, cx: &mut Context<'_>) -> Result<(), CliError> {
    let code = is_code(&a.invite);
    if a.relay.is_some() && !code {
        return Err(backchannel_client::ClientError::Usage(
            "--relay goes with a code; an invite line names its relay".into(),
        )
        .into());
    }
    let joined;
    // The inviter of a code is waiting to admit: so does the joiner, unless told otherwise.
    let wait = a.wait.unwrap_or(if code { CODE_JOIN_WAIT } else { 0 });
    let invite = if code {
        let relay = a.relay.as_deref().map(str::parse).transpose()?;
        joined = cx.engine.code_join(&a.invite, relay).await?;
        cx.out.line(format!(
            "confirmation: {} (the inviter must see the same two words)",
            joined.exchanged.confirmation
        ));
        cx.out.line(format!("inviter: {}", joined.exchanged.fingerprint));
        cx.out.flush();
        joined.invite.as_str()
    } else {
        a.invite.as_str()
    };
    match cx
        .engine
        .join(invite, a.name.clone(), Duration::from_secs(wait))
        .await?
    {
        Some(ch) => cx.out.line(format!("joined channel {ch}")),
        None => cx.out.line(
            "join request sent; you will be admitted when the inviter's backchannel next runs (then run `backchannel sync`)",
        ),
    }
    Ok(())
}

/// `pending`: who waits for approval, one per line: name, fingerprint, since when.
pub async fn pending(a: &ChannelArg, cx: &mut Context<'_>) -> Result<(), CliError> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    for w in cx.engine.pending(&a.channel).await? {
        cx.out.line(format!(
            "{}\t{}\twaiting for {}",
            escape_controls(&w.name),
            w.fingerprint,
            show_duration(Duration::from_secs(now.saturating_sub(w.since)))
        ));
    }
    Ok(())
}

/// `admit`.
pub async fn admit(a: &WhoArgs, cx: &mut Context<'_>) -> Result<(), CliError> {
    let name = cx.engine.admit_waiting(&a.channel, &a.who).await?;
    cx.out.line(format!("admitted {}", escape_controls(&name)));
    Ok(())
}

/// `refuse`.
pub async fn refuse(a: &WhoArgs, cx: &mut Context<'_>) -> Result<(), CliError> {
    let name = cx.engine.refuse_waiting(&a.channel, &a.who).await?;
    cx.out.line(format!("refused {}", escape_controls(&name)));
    Ok(())
}

/// `channels`.
pub async fn channels(a: &ChannelsArgs, cx: &mut Context<'_>) -> Result<(), CliError> {
    cx.engine.refresh().await?;
    for c in cx.engine.channels() {
        if a.json {
            cx.out.line(format!(
                "{}",
                serde_json::json!({"name": c.name, "status": c.status.word(), "members": c.members, "unread": c.unread,
                    "disappear_after_s": c.disappear_after, "expires_at": c.expires_at})
            ));
        } else {
            let mut lifetime = String::new();
            if c.disappear_after > 0 {
                lifetime.push_str(&format!("\tmessages disappear after {}s", c.disappear_after));
            }
            if c.expires_at > 0 {
                lifetime.push_str(&format!("\tcloses at {} (Unix time)", c.expires_at));
            }
            cx.out.line(format!(
                "{}\t{}\t{} members\t{} unread{lifetime}",
                escape_controls(&c.name),
                c.status.word(),
                c.members,
                c.unread
            ));
        }
    }
    Ok(())
}

/// `members`.
pub async fn members(a: &MembersArgs, cx: &mut Context<'_>) -> Result<(), CliError> {
    cx.engine.refresh().await?;
    for m in cx.engine.members(&a.channel)? {
        if a.json {
            cx.out.line(format!(
                "{}",
                serde_json::json!({"name": m.name, "fingerprint": m.fingerprint.to_string(), "verified": m.verified, "you": m.you, "role": role(m.admin), "relay": m.relay.as_ref().map(ToString::to_string)})
            ));
        } else {
            let you = if m.you { " (you)" } else { "" };
            let v = if m.verified { "verified" } else { "unverified" };
            cx.out.line(format!(
                "{}{you}\t{}\t{v}\t{}",
                escape_controls(&m.name),
                m.fingerprint,
                role(m.admin)
            ));
        }
    }
    Ok(())
}

/// A member's role as `members` shows it.
fn role(admin: bool) -> &'static str {
    if admin {
        "admin"
    } else {
        "member"
    }
}

/// `verify`: the safety number on stdout; with `--confirm`, marks the member verified.
/// Without a member: the channel's epoch and channel code.
pub async fn verify(a: &VerifyArgs, cx: &mut Context<'_>) -> Result<(), CliError> {
    let VerifyArgs {
        channel,
        member,
        confirm,
    } = a;
    cx.engine.refresh().await?;
    let Some(member) = member else {
        let (epoch, code) = cx.engine.channel_code(channel)?;
        cx.out.line(format!("epoch {epoch}: {code}"));
        cx.out.eline(format!(
            "compare this code with the other members of {channel} after each of you synced: in the same \
             epoch the codes are the same; a different code means the channel was split, and someone \
             sees messages the others do not"
        ));
        return Ok(());
    };
    let (number, m) = cx.engine.verify(channel, member, *confirm)?;
    cx.out.line(number);
    if *confirm {
        cx.out.eline(format!("{} is now marked verified in {channel}", m.name));
    } else {
        cx.out.eline(format!(
            "compare this number with {} in person or by voice; if it matches, run `backchannel verify {channel} {member} --confirm`",
            m.name
        ));
    }
    Ok(())
}

/// `admin`.
pub async fn admin(a: &AdminArgs, cx: &mut Context<'_>) -> Result<(), CliError> {
    let (name, changed) = cx.engine.admin(&a.channel, &a.member, a.revoke).await?;
    cx.out.line(match (changed, a.revoke) {
        (true, false) => format!("{name} is now an admin of {}", a.channel),
        (true, true) => format!("{name} is no longer an admin of {}", a.channel),
        (false, false) => format!("{name} is already an admin of {}", a.channel),
        (false, true) => format!("{name} is not an admin of {}", a.channel),
    });
    Ok(())
}

/// `remove`.
pub async fn remove(a: &MemberArgs, cx: &mut Context<'_>) -> Result<(), CliError> {
    let name = cx.engine.remove(&a.channel, &a.member).await?;
    cx.out.line(format!("removed {name} from {}", a.channel));
    Ok(())
}

/// `leave`.
pub async fn leave(a: &ChannelArg, cx: &mut Context<'_>) -> Result<(), CliError> {
    cx.engine.leave(&a.channel).await?;
    cx.out.line(format!("left {}", a.channel));
    Ok(())
}

/// `close`.
pub async fn close(a: &ChannelArg, cx: &mut Context<'_>) -> Result<(), CliError> {
    cx.engine.close(&a.channel).await?;
    cx.out.line(format!("closed {}", a.channel));
    Ok(())
}

/// `update`: new keys and a new mailbox in the channel.
pub async fn update(a: &ChannelArg, cx: &mut Context<'_>) -> Result<(), CliError> {
    cx.engine.update_keys(&a.channel).await?;
    cx.out.line(format!("keys and mailbox rotated in {}", a.channel));
    Ok(())
}

/// `debug sequencer`: the channel's sequencer, epoch and claim key (for tests that play
/// a removed member's old device).
pub fn debug_sequencer(a: &ChannelArg, cx: &mut Context<'_>) -> Result<(), CliError> {
    let (seq, epoch, key) = cx.engine.debug_sequencer(&a.channel)?;
    let hex = |b: &[u8]| data_encoding::HEXLOWER.encode(b);
    cx.out.line(format!(
        "{}",
        serde_json::json!({
            "relay": seq.relay.to_string(),
            "send": hex(&seq.send.0),
            "epoch": epoch,
            "claim_key": hex(&key),
        })
    ));
    Ok(())
}

/// `debug mailbox`: this member's receiving mailbox in the channel, secrets included
/// (for tests that play the relay or a network observer).
pub fn debug_mailbox(a: &ChannelArg, cx: &mut Context<'_>) -> Result<(), CliError> {
    let k = cx.engine.debug_mailbox(&a.channel)?;
    let hex = |b: &[u8]| data_encoding::HEXLOWER.encode(b);
    cx.out.line(format!(
        "{}",
        serde_json::json!({
            "relay": k.address.relay.to_string(),
            "mailbox": hex(&k.id().0),
            "send": hex(&k.address.send.0),
            "seal": hex(&k.address.seal.0),
        })
    ));
    Ok(())
}
