-- Hooks for what declarations cannot say (README: "Scripting a mediation").
-- Sandboxed Lua 5.4: string, table, math, utf8 only; a budget of instructions and memory per call.

-- The CRM keys customers by 10-digit ids; flows send them without leading zeros.
function before(inputs)
  inputs.customerId = string.format("%010d", math.tointeger(tonumber(inputs.customerId)))
  return inputs
end

-- Flows branch on a tier name, the CRM answers a number.
local TIER_NAMES = { [0] = "none", [1] = "bronze", [2] = "silver", [3] = "gold" }

function after(answer, inputs)
  answer.tierName = TIER_NAMES[answer.tier] or "unknown"
  return answer
end
