# MQTT 3.1.1 for the firmware: packet.py (pure encode/decode), client.py (asyncio client).
