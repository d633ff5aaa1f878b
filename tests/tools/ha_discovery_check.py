"""Checks Home Assistant MQTT discovery messages with Home Assistant's own
code: its discovery topic pattern, each platform's discovery schema, and its
template engine rendering each value_template on the state message.

Input (a JSON file named by the first argument):
  {"configs": [{"topic": ..., "payload": ...}], "states": {state_topic: payload}}
Output (stdout, one JSON object per config):
  {"topic", "component", "ok", "error", "dropped", "value"}
"dropped" lists keys the schema removed as unknown; "value" is what the
value_template (or the raw state, without one) renders to.
"""

import asyncio
import json
import sys
import tempfile

from homeassistant.components.mqtt import binary_sensor, sensor
from homeassistant.components.mqtt.discovery import TOPIC_MATCHER
from homeassistant.core import HomeAssistant
from homeassistant.helpers.template import Template

SCHEMAS = {
    "sensor": sensor.DISCOVERY_SCHEMA,
    "binary_sensor": binary_sensor.DISCOVERY_SCHEMA,
}
PREFIX = "homeassistant/"


async def main(path):
    with open(path, encoding="utf-8") as f:
        given = json.load(f)
    hass = HomeAssistant(tempfile.mkdtemp())
    for item in given["configs"]:
        topic, result = item["topic"], {"topic": item["topic"], "ok": False}
        match = TOPIC_MATCHER.match(topic[len(PREFIX):]) if topic.startswith(PREFIX) else None
        if match is None or match.group(0) != topic[len(PREFIX):]:
            result["error"] = "not a discovery topic"
            print(json.dumps(result))
            continue
        component = match.group("component")
        result["component"] = component
        try:
            config = json.loads(item["payload"])
            validated = SCHEMAS[component](config)
            result["dropped"] = sorted(k for k in config if k not in validated)
            state = given["states"].get(validated["state_topic"])
            template = validated.get("value_template")
            if state is None:
                result["value"] = None
            elif template is None:
                result["value"] = state
            else:
                template.hass = hass
                # A template that fails renders this instead of raising.
                failed = object()
                value = template.async_render_with_possible_json_value(state, failed)
                if value is failed:
                    raise ValueError(f"the template does not render on {state!r}")
                result["value"] = value
            result["ok"] = True
        except Exception as e:  # a refusal is the answer, not a crash
            result["error"] = f"{type(e).__name__}: {e}"
        print(json.dumps(result))


asyncio.run(main(sys.argv[1]))
