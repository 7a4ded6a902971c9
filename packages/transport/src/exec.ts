/**
 * Running short commands on the remote host over an existing connection
 * (the helper, the remote hash tools). Arguments reach the remote shell only
 * through shellQuote().
 */
import type { Client } from 'ssh2';
import { FerryError } from '@ferry/core';

export interface ExecResult {
  code: number | null;
  signal: string | undefined;
  stdout: string;
  stderr: string;
}

export function execCapture(client: Client, command: string, label: string, maxOutputBytes = 64 * 1024): Promise<ExecResult> {
  return new Promise((resolve, reject) => {
    client.exec(command, (err, channel) => {
      if (err) return reject(new FerryError('CONNECTION_LOST', `cannot run a command on ${label}: ${err.message}`, { host: label, cause: err }));
      // Nothing is written to a command: its stdin ends at once, so that one that reads it (an
      // SFTP-only account runs sftp-server for every command) sees EOF and ends too.
      channel.end();
      let stdout = '';
      let stderr = '';
      let code: number | null = null;
      let signal: string | undefined;
      channel.on('data', (d: Buffer) => {
        if (stdout.length < maxOutputBytes) stdout += d.toString('utf8');
      });
      channel.stderr.on('data', (d: Buffer) => {
        if (stderr.length < maxOutputBytes) stderr += d.toString('utf8');
      });
      channel.on('exit', (c: number | null, s?: string) => {
        code = c;
        signal = s;
      });
      channel.on('close', () => resolve({ code, signal, stdout, stderr }));
      channel.on('error', (e: Error) => reject(new FerryError('CONNECTION_LOST', `command on ${label} failed: ${e.message}`, { host: label, cause: e })));
    });
  });
}
