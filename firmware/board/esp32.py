"""ESP32 board: relay and mains pins, NTC or on-die temperature, cellular modem.

UNTESTED ON HARDWARE: this module compiles with mpy-cross and type-checks against
micropython-esp32-stubs, and hil_tests/ exercise it once a unit is on a serial port,
but it has not run on a real board yet.

Defaults below; override with the ``board`` object of config.json (`configure`):

    {"relay_pin": 26, "relay_active_low": false, "mains_pin": 27,
     "mains_active_low": false, "ntc_pin": null, "ntc_beta": 3950,
     "ntc_r0": 10000, "ntc_series": 10000, "uart": 1, "tx": 17, "rx": 16,
     "baud": 115200, "apn": "internet", "modem_pwr_pin": null}

The modem speaks AT commands on a UART until `link_up` switches it into PPP data
mode: IMEI (AT+CGSN), ICCID (AT+CCID), signal (AT+CSQ) and network time (AT+CCLK,
when the network provides it) are read there, once, and cached; `network.PPP` then
carries IP over the same UART. While PPP runs the signal stays the value read at
link-up (the AT channel is gone). Modem I/O is polled with asyncio sleeps, never a
blocking read.
"""

import asyncio
import time

import machine  # type: ignore[import-not-found]
import network  # type: ignore[import-not-found]

try:
    import esp32  # type: ignore[import-not-found]
except ImportError:  # pragma: no cover
    esp32 = None

# 2000-01-01 in Unix seconds: MicroPython's epoch on esp32.
_EPOCH_2000 = 946684800


def _defaults():
    return {
        "relay_pin": 26, "relay_active_low": False,
        "mains_pin": 27, "mains_active_low": False,
        "ntc_pin": None, "ntc_beta": 3950, "ntc_r0": 10000, "ntc_series": 10000,
        "uart": 1, "tx": 17, "rx": 16, "baud": 115200,
        "apn": "internet", "modem_pwr_pin": None,
    }


def csq_to_dbm(rssi):
    """AT+CSQ rssi (0..31, 99 unknown) -> dBm (-113 .. -51) or None."""
    if rssi < 0 or rssi > 31:
        return None
    return -113 + 2 * rssi


class Board:
    name = "esp32"

    def __init__(self, log=None):
        self.log = log
        self._opts = _defaults()
        self._relay_pin = None
        self._mains_pin = None
        self._adc = None
        self._uart = None
        self._ppp = None
        self._imei = ""
        self._iccid = ""
        self._signal = None
        self._clock_ok = False
        self._epoch_off = _EPOCH_2000 if time.gmtime(0)[0] == 2000 else 0
        self._setup_pins()

    def configure(self, opts):
        if type(opts) is dict:
            on = self.relay_get()  # under the old polarity
            for k in opts:
                if k in self._opts:
                    self._opts[k] = opts[k]
            self._setup_pins(on)

    def _setup_pins(self, on=False):
        o = self._opts
        self._relay_pin = machine.Pin(o["relay_pin"], machine.Pin.OUT)
        self.relay_set(on)
        self._mains_pin = machine.Pin(o["mains_pin"], machine.Pin.IN)
        self._adc = None
        if o["ntc_pin"] is not None:
            adc = machine.ADC(machine.Pin(o["ntc_pin"]))
            try:
                adc.atten(machine.ADC.ATTN_11DB)
            except AttributeError:
                pass
            self._adc = adc

    def _warn(self, text):
        if self.log is not None:
            self.log.warn(text)

    def storage_root(self):
        return "/"

    def unique_id(self):
        uid = machine.unique_id()
        return "".join("%02x" % b for b in uid)

    def modem_ids(self):
        return self._imei, self._iccid

    def signal_dbm(self):
        return self._signal

    def relay_get(self):
        if self._relay_pin is None:
            return False
        v = self._relay_pin.value()
        return (not v) if self._opts["relay_active_low"] else bool(v)

    def relay_set(self, on):
        level = (not on) if self._opts["relay_active_low"] else bool(on)
        if self._relay_pin is not None:
            self._relay_pin.value(1 if level else 0)

    def mains_present(self):
        if self._mains_pin is None:
            return True
        v = self._mains_pin.value()
        return (not v) if self._opts["mains_active_low"] else bool(v)

    def temperature_c(self):
        if self._adc is not None:
            import math

            raw = self._adc.read_u16()
            if raw <= 0 or raw >= 65535:
                return None
            o = self._opts
            # NTC on the low side of a divider: R = Rs * raw / (max - raw)
            r = o["ntc_series"] * raw / (65535 - raw)
            inv_t = 1 / 298.15 + math.log(r / o["ntc_r0"]) / o["ntc_beta"]
            return 1 / inv_t - 273.15
        if esp32 is not None:
            f = getattr(esp32, "mcu_temperature", None)
            if f is not None:
                return float(f())
            f = getattr(esp32, "raw_temperature", None)
            if f is not None:
                return (f() - 32) / 1.8
        return None

    def clock_valid(self):
        return self._clock_ok or time.gmtime()[0] >= 2025

    def time(self):
        return int(time.time()) + self._epoch_off

    # --- modem -------------------------------------------------------------

    def _uart_open(self):
        if self._uart is None:
            o = self._opts
            self._uart = machine.UART(o["uart"], baudrate=o["baud"], tx=o["tx"], rx=o["rx"], timeout=0)
        return self._uart

    async def _at(self, cmd, timeout_ms=2000, until=(b"OK", b"ERROR", b"CONNECT")):
        """Send an AT command; the response lines up to a final result code."""
        u = self._uart_open()
        while u.any():
            u.read()
        u.write(cmd + "\r\n")
        buf = b""
        lines = []
        t0 = time.ticks_ms()
        while time.ticks_diff(time.ticks_ms(), t0) < timeout_ms:
            n = u.any()
            if not n:
                await asyncio.sleep_ms(20)
                continue
            chunk = u.read(n)
            if chunk:
                buf += chunk
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                line = line.strip()
                if not line or line == cmd.encode():
                    continue
                lines.append(line)
                for final in until:
                    if line.startswith(final):
                        return lines
        raise OSError("modem: no answer to " + cmd)

    async def _read_ids(self):
        for _ in range(10):
            try:
                await self._at("AT", 500)
                break
            except OSError:
                await asyncio.sleep_ms(500)
        await self._at("ATE0")
        if not (self._imei and self._iccid):  # ids: read once; signal and clock: every link-up
            await self._read_hw_ids()
        await self.read_signal()
        await self._read_clock()

    async def _read_hw_ids(self):
        for line in await self._at("AT+CGSN"):
            s = line.decode()
            if s.isdigit() and len(s) >= 14:
                self._imei = s
        for line in await self._at("AT+CCID"):
            s = line.decode().replace("+CCID:", "").replace("+ICCID:", "").strip()
            if len(s) >= 18 and s[:18].isdigit():
                self._iccid = s

    async def read_signal(self):
        """AT+CSQ -> dBm (only while the modem is in command mode)."""
        for line in await self._at("AT+CSQ"):
            if line.startswith(b"+CSQ:"):
                try:
                    self._signal = csq_to_dbm(int(line[5:].split(b",")[0]))
                except ValueError:
                    self._signal = None
        return self._signal

    async def _read_clock(self):
        # +CCLK: "25/03/14,09:26:53+04" (local time + quarter hours); set RTC to UTC.
        try:
            lines = await self._at("AT+CCLK?")
        except OSError:
            return
        for line in lines:
            if not line.startswith(b"+CCLK:"):
                continue
            try:
                s = line.split(b'"')[1].decode()
                d, t = s.split(",")
                yy, mo, dd = (int(x) for x in d.split("/"))
                sign = 1 if "+" in t else -1
                hms, tz = t.replace("-", "+").split("+")
                hh, mi, ss = (int(x) for x in hms.split(":"))
                if yy < 25:
                    return  # no network time yet (modem default 1980/2004/...)
                secs = time.mktime((2000 + yy, mo, dd, hh, mi, ss, 0, 0)) - sign * int(tz) * 900
                tm = time.gmtime(secs)
                machine.RTC().datetime((tm[0], tm[1], tm[2], tm[6], tm[3], tm[4], tm[5], 0))
                self._clock_ok = True
            except (ValueError, IndexError):
                return

    async def link_up(self):
        if self._ppp is not None and self._ppp.isconnected():
            return
        await self._read_ids()
        apn = self._opts["apn"]
        await self._at('AT+CGDCONT=1,"IP","%s"' % apn)
        lines = await self._at("ATD*99#", 30000)
        if not lines or not lines[-1].startswith(b"CONNECT"):
            raise OSError("modem: dial failed")
        ppp = network.PPP(self._uart_open())
        ppp.active(True)
        ppp.connect()
        self._ppp = ppp
        t0 = time.ticks_ms()
        while not ppp.isconnected():
            if time.ticks_diff(time.ticks_ms(), t0) > 60000:
                raise OSError("ppp: no link")
            await asyncio.sleep_ms(100)

    async def link_down(self):
        ppp = self._ppp
        self._ppp = None
        if ppp is not None:
            try:
                ppp.disconnect()
                ppp.active(False)
            except OSError:
                pass
        # Back to command mode: guard time, +++, guard time, then hang up.
        u = self._uart_open()
        await asyncio.sleep_ms(1100)
        u.write(b"+++")
        await asyncio.sleep_ms(1100)
        try:
            await self._at("ATH", 2000)
        except OSError:
            pass

    def reset(self):
        machine.reset()
