//! The escape hatch: a mediation's Lua script (mlua, Lua 5.4, vendored) with two optional hooks,
//! `before(inputs)` (may return changed inputs) and `after(answer, inputs)` (returns the answer).
//! Sandboxed: only the `string`, `table`, `math` and `utf8` libraries, no `io`, `os`, `require`,
//! `load`, `dofile`; each state has a memory limit and each call an instruction budget. A script
//! that errors or runs past a limit is a 500 `script_error` and its state is thrown away; the
//! gateway carries on. States are pooled per mediation (globals a script sets may persist from one
//! call to the next in a state: hooks should not rely on them).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use mlua::{HookTriggers, Lua, LuaOptions, LuaSerdeExt, StdLib, VmState};
use serde_json::Value;

use super::inputs::Inputs;
use crate::problem::Problem;

/// Lua instructions one hook call may run.
pub const INSTRUCTION_BUDGET: u64 = 1_000_000;
/// Memory one Lua state may hold.
pub const MEMORY_LIMIT_BYTES: usize = 16 * 1024 * 1024;
/// The budget is checked every this many instructions.
const HOOK_STEP: u32 = 1000;
/// Idle states kept per script.
const MAX_IDLE_STATES: usize = 16;
/// Globals the sandbox removes from Lua's base library.
const REMOVED_GLOBALS: [&str; 7] = ["dofile", "loadfile", "load", "require", "collectgarbage", "print", "loadstring"];

struct State {
    lua: Lua,
    /// Instructions spent by the current call.
    spent: Arc<AtomicU64>,
}

pub struct Script {
    file: PathBuf,
    source: String,
    has_before: bool,
    has_after: bool,
    idle: Mutex<Vec<State>>,
}

impl std::fmt::Debug for Script {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Script").field("file", &self.file).finish()
    }
}

impl Script {
    /// Compiles the script once (syntax errors and missing hooks are config errors).
    pub fn compile(file: &Path, source: String) -> Result<Script, String> {
        let mut script = Script {
            file: file.to_path_buf(),
            source,
            has_before: false,
            has_after: false,
            idle: Mutex::new(Vec::new()),
        };
        let state = script.new_state()?;
        let is_function =
            |name: &str| state.lua.globals().get::<mlua::Value>(name).map(|v| v.is_function()).unwrap_or(false);
        script.has_before = is_function("before");
        script.has_after = is_function("after");
        if !script.has_before && !script.has_after {
            return Err("defines neither `before(inputs)` nor `after(answer, inputs)`".into());
        }
        script.idle.lock().unwrap_or_else(|e| e.into_inner()).push(state);
        Ok(script)
    }

    fn new_state(&self) -> Result<State, String> {
        let libs = StdLib::TABLE | StdLib::STRING | StdLib::MATH | StdLib::UTF8;
        let lua = Lua::new_with(libs, LuaOptions::default()).map_err(|e| e.to_string())?;
        let globals = lua.globals();
        for name in REMOVED_GLOBALS {
            globals.set(name, mlua::Nil).map_err(|e| e.to_string())?;
        }
        lua.set_memory_limit(MEMORY_LIMIT_BYTES).map_err(|e| e.to_string())?;
        let spent = Arc::new(AtomicU64::new(0));
        let counter = spent.clone();
        lua.set_hook(HookTriggers::new().every_nth_instruction(HOOK_STEP), move |_, _| {
            let spent = counter.fetch_add(u64::from(HOOK_STEP), Ordering::Relaxed) + u64::from(HOOK_STEP);
            if spent > INSTRUCTION_BUDGET {
                return Err(mlua::Error::RuntimeError(format!("over its budget of {INSTRUCTION_BUDGET} instructions")));
            }
            Ok(VmState::Continue)
        })
        .map_err(|e| e.to_string())?;
        let name = format!("@{}", self.file.display());
        lua.load(self.source.as_str()).set_name(name).exec().map_err(|e| e.to_string())?;
        spent.store(0, Ordering::Relaxed);
        Ok(State { lua, spent })
    }

    /// `before(inputs)`: the inputs the backend request is built from.
    /// `None`: the inputs stay as they are.
    pub fn before(&self, inputs: &Inputs) -> Result<Option<Inputs>, Problem> {
        if !self.has_before {
            return Ok(None);
        }
        let original = Value::Object(inputs.clone().into_iter().collect());
        match self.call("before", &[&original])? {
            Value::Null => Ok(None),
            Value::Object(map) => {
                for (name, value) in &map {
                    if value.is_array() || value.is_object() {
                        return Err(script_error(format!("before: input `{name}` is not a plain value")));
                    }
                }
                Ok(Some(map.into_iter().collect()))
            }
            _ => Err(script_error("before: must return the inputs table or nil".into())),
        }
    }

    /// `after(answer, inputs)`: the answer the caller gets.
    pub fn after(&self, answer: Value, inputs: &Inputs) -> Result<Value, Problem> {
        if !self.has_after {
            return Ok(answer);
        }
        let inputs = Value::Object(inputs.clone().into_iter().collect());
        let answer = self.call("after", &[&answer, &inputs])?;
        super::mapping::check_genesys_limits(&answer)
            .map_err(|e| script_error(format!("after: the answer is not one a data action can read: {e}")))?;
        Ok(answer)
    }

    fn call(&self, hook: &str, args: &[&Value]) -> Result<Value, Problem> {
        let pooled = self.idle.lock().unwrap_or_else(|e| e.into_inner()).pop();
        let state = match pooled {
            Some(state) => state,
            None => self.new_state().map_err(script_error)?,
        };
        state.spent.store(0, Ordering::Relaxed);
        let result = (|| {
            let function: mlua::Function = state.lua.globals().get(hook)?;
            let mut lua_args = mlua::MultiValue::new();
            for arg in args {
                lua_args.push_back(state.lua.to_value(arg)?);
            }
            let returned: mlua::Value = function.call(lua_args)?;
            state.lua.from_value::<Value>(returned)
        })();
        match result {
            Ok(value) => {
                let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
                if idle.len() < MAX_IDLE_STATES {
                    idle.push(state);
                }
                Ok(value)
            }
            // The state may be half-way through anything: it is dropped.
            Err(e) => Err(script_error(format!("{hook}: {}", first_line(&e.to_string())))),
        }
    }
}

fn script_error(reason: String) -> Problem {
    Problem::ScriptError { reason }
}

fn first_line(message: &str) -> String {
    message.lines().next().unwrap_or_default().chars().take(300).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn script(source: &str) -> Result<Script, String> {
        Script::compile(Path::new("test.lua"), source.to_string())
    }

    fn inputs(pairs: &[(&str, Value)]) -> Inputs {
        pairs.iter().map(|(k, v)| (k.to_string(), v.clone())).collect()
    }

    #[test]
    fn hooks_change_inputs_and_answers() {
        let s = script(
            r#"
            function before(inputs)
              inputs.id = string.format("%08d", math.tointeger(tonumber(inputs.id)))
              return inputs
            end
            function after(answer, inputs)
              answer.tierName = ({"bronze", "silver", "gold"})[answer.tier] or "none"
              answer.asked = inputs.id
              return answer
            end
            "#,
        )
        .unwrap();
        let changed = s.before(&inputs(&[("id", "42".into())])).unwrap().unwrap();
        assert_eq!(changed["id"], "00000042");
        let answer = s.after(serde_json::json!({"tier": 2}), &changed).unwrap();
        assert_eq!(answer, serde_json::json!({"tier": 2, "tierName": "silver", "asked": "00000042"}));
    }

    #[test]
    fn the_sandbox_has_no_io_os_or_loading() {
        for forbidden in [
            "io.open('/etc/passwd')",
            "os.execute('true')",
            "require('os')",
            "load('return 1')",
            "dofile('/etc/passwd')",
        ] {
            let s = script(&format!("function after(a) local x = {forbidden}; return a end")).unwrap();
            let e = s.after(serde_json::json!({}), &Inputs::new()).unwrap_err();
            assert!(matches!(e, Problem::ScriptError { .. }), "{forbidden}");
        }
    }

    #[test]
    fn runaway_scripts_stop_at_their_budget_and_the_next_call_is_fine() {
        let s = script(
            r#"
            function after(a, inputs)
              if inputs.mode == "spin" then while true do end end
              -- A few instructions, far over the memory limit: only that limit can stop it.
              if inputs.mode == "eat" then local big = string.rep("x", 64 * 1024 * 1024) end
              if inputs.mode == "fail" then error("no such tier") end
              return a
            end
            "#,
        )
        .unwrap();
        for mode in ["spin", "eat", "fail"] {
            let e = s.after(serde_json::json!({}), &inputs(&[("mode", mode.into())])).unwrap_err();
            let Problem::ScriptError { reason } = e else { panic!("{mode}: {e:?}") };
            assert!(!reason.is_empty(), "{mode}");
        }
        let ok = s.after(serde_json::json!({"x": 1}), &inputs(&[("mode", "ok".into())])).unwrap();
        assert_eq!(ok, serde_json::json!({"x": 1}));
    }

    #[test]
    fn an_after_hook_must_return_what_a_data_action_can_read() {
        for body in [
            "return {a = {{1}, {2}}}",
            "return 42",
            "local t = {} local c = t for i = 1, 60 do c.x = {} c = c.x end return t",
        ] {
            let s = script(&format!("function after(answer) {body} end")).unwrap();
            assert!(
                matches!(s.after(serde_json::json!({}), &Inputs::new()), Err(Problem::ScriptError { .. })),
                "{body}"
            );
        }
    }

    #[test]
    fn syntax_errors_and_missing_hooks_are_config_errors() {
        assert!(script("function before(").unwrap_err().contains("test.lua"));
        assert!(script("local x = 1").unwrap_err().contains("neither"));
    }
}
