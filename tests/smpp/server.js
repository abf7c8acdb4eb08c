// An SMS centre for the SMPP channel's tests, on the npm `smpp` package (an implementation that is
// not ours). It accepts binds whose password matches, answers every submit_sm with a message id,
// prints one JSON line per event on stdout (the text decoded by the package: data_coding 0 as the
// GSM 03.38 alphabet, 8 as UCS-2; the UDH parts) and, to transceivers, sends a delivery receipt for
// every submit that asked for one.
//
//   node server.js [--port N] [--system-id hub] [--password secret]
//                  [--reject PREFIX=STATUS]...   refuse destinations starting with PREFIX (status hex or decimal)
//                  [--undeliverable PREFIX]...   accept, then report stat:UNDELIV err:001
//                  [--delay-ms N]                answer submit_sm after N ms
//                  [--no-receipts]
//
// The first line is {"event":"listening","port":N}. It stops on SIGTERM or when stdin closes.
'use strict';

const smpp = require('smpp');

function parseArgs(argv) {
	const opts = {port: 0, systemId: 'hub', password: 'secret', reject: [], undeliverable: [], delayMs: 0, receipts: true};
	for (let i = 0; i < argv.length; i++) {
		const arg = argv[i];
		const value = () => {
			i += 1;
			if (i >= argv.length) {
				throw new Error(`${arg} needs a value`);
			}
			return argv[i];
		};
		switch (arg) {
			case '--port': opts.port = Number(value()); break;
			case '--system-id': opts.systemId = value(); break;
			case '--password': opts.password = value(); break;
			case '--reject': {
				const [prefix, status] = value().split('=');
				opts.reject.push({prefix, status: Number(status)});
				break;
			}
			case '--undeliverable': opts.undeliverable.push(value()); break;
			case '--delay-ms': opts.delayMs = Number(value()); break;
			case '--no-receipts': opts.receipts = false; break;
			default: throw new Error(`unknown argument ${arg}`);
		}
	}
	return opts;
}

// The package decodes short_message and drops sm_length; keep each PDU's bytes to read it.
const fromBuffer = smpp.PDU.prototype.fromBuffer;
smpp.PDU.prototype.fromBuffer = function (buffer) {
	Object.defineProperty(this, 'raw', {value: buffer, enumerable: false});
	return fromBuffer.call(this, buffer);
};

// sm_length of a submit_sm as sent: the octet after the fixed fields (SMPP 3.4 section 4.4.1).
function smLength(raw) {
	let at = 16;
	const cstr = () => {
		while (at < raw.length && raw[at] !== 0) at++;
		at++;
	};
	cstr(); // service_type
	at += 2; cstr(); // source
	at += 2; cstr(); // destination
	at += 3; // esm_class, protocol_id, priority_flag
	cstr(); cstr(); // schedule_delivery_time, validity_period
	at += 4; // registered_delivery, replace_if_present_flag, data_coding, sm_default_msg_id
	return at < raw.length ? raw[at] : null;
}

const opts = parseArgs(process.argv.slice(2));
const log = (event) => process.stdout.write(JSON.stringify(event) + '\n');
// Ids differ between runs, as a real centre's do across a restart.
const runId = Date.now().toString(16).slice(-6).toUpperCase();
let submitted = 0;

function smppDate(d) {
	const p = (n) => String(n).padStart(2, '0');
	return p(d.getUTCFullYear() % 100) + p(d.getUTCMonth() + 1) + p(d.getUTCDate()) + p(d.getUTCHours()) + p(d.getUTCMinutes());
}

function udhParts(udh) {
	for (const ie of udh || []) {
		// IEI 0x00: concatenation with an 8-bit reference.
		if (ie[0] === 0x00 && ie.length >= 5) {
			return {ref: ie[2], total: ie[3], seq: ie[4]};
		}
		if (ie[0] === 0x08 && ie.length >= 6) {
			return {ref: ie.readUInt16BE(2), total: ie[4], seq: ie[5]};
		}
	}
	return null;
}

const server = smpp.createServer((session) => {
	let mode = null;
	const bind = (command) => (pdu) => {
		const ok = pdu.system_id === opts.systemId && pdu.password === opts.password;
		const status = ok ? 0 : (pdu.system_id === opts.systemId ? smpp.ESME_RINVPASWD : smpp.ESME_RINVSYSID);
		log({event: 'bind', command, system_id: pdu.system_id, system_type: pdu.system_type, interface_version: pdu.interface_version, status});
		if (!ok) {
			session.send(pdu.response({command_status: status}));
			session.close();
			return;
		}
		mode = command;
		session.send(pdu.response({system_id: 'node-smsc'}));
	};
	session.on('bind_transceiver', bind('bind_transceiver'));
	session.on('bind_transmitter', bind('bind_transmitter'));
	session.on('bind_receiver', bind('bind_receiver'));

	session.on('submit_sm', (pdu) => {
		if (!mode || mode === 'bind_receiver') {
			session.send(pdu.response({command_status: smpp.ESME_RINVBNDSTS}));
			return;
		}
		const sm = pdu.short_message || {};
		const text = typeof sm === 'string' ? sm : (typeof sm.message === 'string' ? sm.message : null);
		const rejected = opts.reject.find((r) => pdu.destination_addr.startsWith(r.prefix));
		const status = rejected ? rejected.status : 0;
		const messageId = status ? null : `${runId}${(++submitted).toString(16).toUpperCase().padStart(4, '0')}`;
		log({
			event: 'submit_sm',
			sequence: pdu.sequence_number,
			message_id: messageId,
			status,
			source_addr: pdu.source_addr,
			source_addr_ton: pdu.source_addr_ton,
			source_addr_npi: pdu.source_addr_npi,
			destination_addr: pdu.destination_addr,
			dest_addr_ton: pdu.dest_addr_ton,
			dest_addr_npi: pdu.dest_addr_npi,
			esm_class: pdu.esm_class,
			data_coding: pdu.data_coding,
			registered_delivery: pdu.registered_delivery,
			sm_length: pdu.raw ? smLength(pdu.raw) : null,
			text,
			udh: udhParts(sm.udh),
		});
		const answer = () => {
			if (session.socket.destroyed) {
				return;
			}
			log({event: 'submit_sm_resp', sequence: pdu.sequence_number, status});
			if (status) {
				session.send(pdu.response({command_status: status}));
				return;
			}
			session.send(pdu.response({message_id: messageId}));
			if (!opts.receipts || !(pdu.registered_delivery & 1) || mode !== 'bind_transceiver') {
				return;
			}
			const failed = opts.undeliverable.some((p) => pdu.destination_addr.startsWith(p));
			const stat = failed ? 'UNDELIV' : 'DELIVRD';
			const now = smppDate(new Date());
			const receipt = `id:${messageId} sub:001 dlvrd:${failed ? '000' : '001'} submit date:${now} done date:${now} stat:${stat} err:${failed ? '001' : '000'} text:`;
			setTimeout(() => {
				session.deliver_sm({
					source_addr: pdu.destination_addr,
					source_addr_ton: pdu.dest_addr_ton,
					source_addr_npi: pdu.dest_addr_npi,
					destination_addr: pdu.source_addr,
					esm_class: smpp.ESM_CLASS.MC_DELIVERY_RECEIPT,
					short_message: Buffer.from(receipt, 'ascii'),
				}, (resp) => {
					log({event: 'deliver_sm_resp', message_id: messageId, stat, status: resp.command_status});
				});
			}, 20);
		};
		if (opts.delayMs > 0) {
			setTimeout(answer, opts.delayMs);
		} else {
			answer();
		}
	});

	session.on('enquire_link', (pdu) => {
		log({event: 'enquire_link'});
		session.send(pdu.response());
	});
	session.on('unbind', (pdu) => {
		log({event: 'unbind'});
		session.send(pdu.response());
		session.close();
	});
	session.on('error', (e) => log({event: 'error', message: String(e && e.message)}));
	session.on('close', () => log({event: 'close'}));
});

server.listen(opts.port, '127.0.0.1', () => {
	log({event: 'listening', port: server.address().port});
});

const stop = () => {
	for (const s of server.sessions.slice()) {
		s.destroy();
	}
	server.close(() => process.exit(0));
	setTimeout(() => process.exit(0), 500).unref();
};
process.on('SIGTERM', stop);
process.on('SIGINT', stop);
process.stdin.on('end', stop);
process.stdin.resume();
