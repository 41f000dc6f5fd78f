//! The runtime behaviour of the core runnable tasks: [`RunnableTask`]
//! implementations for the property structs of [`crate::flow::tasks`], and
//! [`register_core_runners`], which [`RunnerRegistry::core`](crate::worker::RunnerRegistry::core)
//! calls.
//!
//! - [`basic`]: Log, debug.Return, debug.Echo, OutputValues, Fail, Assert, Sleep.
//! - [`http`]: http.Request, http.Download, and the polling http.Trigger.
//! - [`script`]: scripts.{shell,python,node}.{Commands,Script} on the Process runner.
//! - [`kv`]: kv.Set, kv.Get, kv.Delete.
//! - [`repository`]: log.Fetch, execution.Count, execution.PurgeExecutions, execution.Resume and
//!   trigger.Toggle, through the worker's [`ExecutionServices`](crate::worker::ExecutionServices).
//! - [`state`]: state.Set, state.Get, state.Delete.
//! - [`storage`]: storage.LocalFiles, Concat, Split, Size, Delete, PurgeCurrentExecutionFiles, Write.
//! - [`templating`]: templating.TemplatedTask, which runs the task its rendered `spec` describes.
//! - [`working_directory`]: flow.WorkingDirectory, whose children run on the worker in one directory.
//! - [`for_each_item`]: the internal `_split` and `_merge` tasks of flow.ForEachItem.

pub mod basic;
pub mod for_each_item;
pub mod http;
pub mod kv;
pub mod repository;
pub mod script;
pub mod state;
pub mod storage;
pub mod templating;
pub mod working_directory;

use crate::executor::for_each_item as fei;
use crate::flow::registry::TaskRegistry;
use crate::flow::tasks as t;
use crate::worker::runner::{RunnableTask, RunnerRegistry};

/// Registers every core runnable task and polling trigger in `registry`.
pub fn register_core_runners(registry: &mut RunnerRegistry) {
    registry.register_polling::<crate::flow::triggers::HttpTrigger>();
    registry
        .register::<t::Log>()
        .register::<t::Return>()
        .register::<t::Echo>()
        .register::<t::OutputValues>()
        .register::<t::Fail>()
        .register::<t::Assert>()
        .register::<t::Sleep>()
        .register::<t::HttpRequest>()
        .register::<t::HttpDownload>()
        .register::<t::KvSet>()
        .register::<t::StateSet>()
        .register::<t::LocalFiles>()
        .register::<t::Concat>()
        .register::<t::Split>()
        .register::<t::Size>()
        .register::<t::StorageDelete>()
        .register::<t::PurgeCurrentExecutionFiles>()
        .register::<t::Write>()
        .register::<t::TemplatedTask>()
        .register::<t::LogFetch>()
        .register::<t::ExecutionCount>()
        .register::<t::PurgeExecutions>()
        .register::<t::ExecutionResume>()
        .register::<t::TriggerToggle>()
        .register::<t::WorkingDirectory>();
    registry.register_with(fei::SPLIT_TYPE, |task, _: &TaskRegistry| {
        let split: for_each_item::ForEachItemSplit = for_each_item::decode(task)?;
        Ok(Box::new(split) as Box<dyn RunnableTask>)
    });
    registry.register_with(fei::MERGE_TYPE, |task, _: &TaskRegistry| {
        let merge: for_each_item::ForEachItemMerge = for_each_item::decode(task)?;
        Ok(Box::new(merge) as Box<dyn RunnableTask>)
    });
    for (name, delete) in [
        ("io.kestra.plugin.core.kv.Get", false),
        ("io.kestra.plugin.core.kv.Delete", true),
    ] {
        registry.register_with(name, move |task, tasks: &TaskRegistry| {
            let props = tasks.decode::<t::KvKey>(task)?;
            Ok(Box::new(kv::KvKeyTask { props, delete }) as Box<dyn RunnableTask>)
        });
    }
    for (name, delete) in [
        ("io.kestra.plugin.core.state.Get", false),
        ("io.kestra.plugin.core.state.Delete", true),
    ] {
        registry.register_with(name, move |task, tasks: &TaskRegistry| {
            let props = tasks.decode::<t::StateKey>(task)?;
            Ok(Box::new(state::StateKeyTask { props, delete }) as Box<dyn RunnableTask>)
        });
    }
    for language in script::Language::ALL {
        registry.register_with(
            &language.commands_type(),
            move |task, tasks: &TaskRegistry| {
                let props = tasks.decode::<t::ScriptCommands>(task)?;
                Ok(Box::new(script::CommandsTask { props, language }) as Box<dyn RunnableTask>)
            },
        );
        registry.register_with(
            &language.script_type(),
            move |task, tasks: &TaskRegistry| {
                let props = tasks.decode::<t::ScriptInline>(task)?;
                Ok(Box::new(script::ScriptTask { props, language }) as Box<dyn RunnableTask>)
            },
        );
    }
}
