//! One module per command family. Each command is a function from its parsed
//! arguments (`args.rs`) and a [`Context`] to what it prints; [`run`] picks the
//! function for a command on an open engine, wherever it runs (here, or in the
//! home's daemon, which calls [`run`] too). Nothing here knows about the daemon.

pub mod bench;
pub mod channel;
pub mod config;
pub mod courier;
pub mod drop;
pub mod files;
pub mod identity;
pub mod manual;
pub mod message;
pub mod relay;

use std::path::Path;

use backchannel_client::Engine;

use crate::args::{ChannelCommand, ConfigCommand, CourierCommand, DebugCommand, DropBoxCommand, EngineCommand};
use crate::error::CliError;
use crate::output::Out;

/// What a command on an open engine works with.
pub struct Context<'a> {
    /// The home's engine.
    pub engine: &'a mut Engine,
    /// Where its output goes.
    pub out: &'a Out,
    /// The directory relative paths are taken from (the caller's, in a daemon).
    pub cwd: &'a Path,
}

/// Runs one command on an open engine.
pub async fn run(command: &EngineCommand, cx: &mut Context<'_>) -> Result<(), CliError> {
    match command {
        EngineCommand::Channel(ChannelCommand::New(a)) => channel::new(a, cx).await,
        EngineCommand::Invite(a) => channel::invite(a, cx).await,
        EngineCommand::Join(a) => channel::join(a, cx).await,
        EngineCommand::Channels(a) => channel::channels(a, cx).await,
        EngineCommand::Members(a) => channel::members(a, cx).await,
        EngineCommand::Verify(a) => channel::verify(a, cx).await,
        EngineCommand::Remove(a) => channel::remove(a, cx).await,
        EngineCommand::Admin(a) => channel::admin(a, cx).await,
        EngineCommand::Pending(a) => channel::pending(a, cx).await,
        EngineCommand::Admit(a) => channel::admit(a, cx).await,
        EngineCommand::Refuse(a) => channel::refuse(a, cx).await,
        EngineCommand::Leave(a) => channel::leave(a, cx).await,
        EngineCommand::Close(a) => channel::close(a, cx).await,
        EngineCommand::Update(a) => channel::update(a, cx).await,
        EngineCommand::Debug(DebugCommand::Mailbox(a)) => channel::debug_mailbox(a, cx),
        EngineCommand::Debug(DebugCommand::Sequencer(a)) => channel::debug_sequencer(a, cx),
        EngineCommand::Sync(a) => message::sync(a, cx).await,
        EngineCommand::Send(a) => message::send(a, cx).await,
        EngineCommand::Read(a) => message::read(a, cx).await,
        EngineCommand::Watch(a) => message::watch(a, cx).await,
        EngineCommand::WatchOnce(a) => message::print_unread(a, cx),
        EngineCommand::Courier(CourierCommand::Export(a)) => courier::export(a, cx),
        EngineCommand::Courier(CourierCommand::Import(a)) => courier::import(a, cx).await,
        EngineCommand::Drop(DropBoxCommand::Create(a)) => drop::create(a, cx).await,
        EngineCommand::Drop(DropBoxCommand::Address(a)) => drop::address(a, cx).await,
        EngineCommand::Drop(DropBoxCommand::Read(a)) => drop::read(a, cx).await,
        EngineCommand::Drop(DropBoxCommand::Reply(a)) => drop::reply(a, cx).await,
        EngineCommand::Config(ConfigCommand::Get { key }) => config::get(key.as_deref(), cx),
        EngineCommand::Config(ConfigCommand::Set { key, value }) => config::set(key, value, cx),
    }
}
