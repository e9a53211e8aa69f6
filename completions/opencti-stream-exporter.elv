
use builtin;
use str;

set edit:completion:arg-completer[opencti-stream-exporter] = {|@words|
    fn spaces {|n|
        builtin:repeat $n ' ' | str:join ''
    }
    fn cand {|text desc|
        edit:complex-candidate $text &display=$text' '(spaces (- 14 (wcswidth $text)))$desc
    }
    var command = 'opencti-stream-exporter'
    for word $words[1..-1] {
        if (str:has-prefix $word '-') {
            break
        }
        set command = $command';'$word
    }
    var completions = [
        &'opencti-stream-exporter'= {
            cand -c 'YAML configuration file [default: ./config.yml when present]'
            cand --config 'YAML configuration file [default: ./config.yml when present]'
            cand --state 'State file [default: `state.path`, else next to the config file]'
            cand -q 'Print only warnings and errors'
            cand --quiet 'Print only warnings and errors'
            cand -v 'Print more (-v: debug, -vv: trace)'
            cand --verbose 'Print more (-v: debug, -vv: trace)'
            cand -h 'Print help (see more with ''--help'')'
            cand --help 'Print help (see more with ''--help'')'
            cand -V 'Print version'
            cand --version 'Print version'
            cand run 'Export the live stream: follow it, write batch files, save the cursor'
            cand state 'Show or reset the saved state (cursor, file count)'
            cand check-stream 'Check the configuration, OpenCTI, the stream and the storage, item by item'
            cand help 'Print this message or the help of the given subcommand(s)'
        }
        &'opencti-stream-exporter;run'= {
            cand --from 'Start after this position on a first run: an ISO date with a zone, epoch milliseconds, or `<ms>-<seq>`'
            cand --until 'Stop once the stream has passed this position (a date, epoch ms, `<ms>-<seq>`, or `now`)'
            cand --metrics-textfile 'At exit, write the metrics to this file (Prometheus text format, for node-exporter''s textfile collector)'
            cand --output-dir 'Write to this directory instead of the configured destination'
            cand --consumer-count 'Worker threads that turn events into lines [default: `connector.consumer_count`]'
            cand -c 'YAML configuration file [default: ./config.yml when present]'
            cand --config 'YAML configuration file [default: ./config.yml when present]'
            cand --state 'State file [default: `state.path`, else next to the config file]'
            cand --once 'Stop once caught up with the stream head announced at connection'
            cand --accept-gap 'Continue when the saved cursor is older than what the server retains, recording the gap in the state'
            cand -q 'Print only warnings and errors'
            cand --quiet 'Print only warnings and errors'
            cand -v 'Print more (-v: debug, -vv: trace)'
            cand --verbose 'Print more (-v: debug, -vv: trace)'
            cand -h 'Print help (see more with ''--help'')'
            cand --help 'Print help (see more with ''--help'')'
            cand -V 'Print version'
            cand --version 'Print version'
        }
        &'opencti-stream-exporter;state'= {
            cand -c 'YAML configuration file [default: ./config.yml when present]'
            cand --config 'YAML configuration file [default: ./config.yml when present]'
            cand --state 'State file [default: `state.path`, else next to the config file]'
            cand -q 'Print only warnings and errors'
            cand --quiet 'Print only warnings and errors'
            cand -v 'Print more (-v: debug, -vv: trace)'
            cand --verbose 'Print more (-v: debug, -vv: trace)'
            cand -h 'Print help'
            cand --help 'Print help'
            cand -V 'Print version'
            cand --version 'Print version'
            cand show 'Print the saved state: cursor, next file number, pending upload, last run'
            cand reset 'Reset the stream position (the file numbering is kept), optionally to a given cursor'
            cand import 'Take over from the reference Python connector: read its state from OpenCTI and save it as this tool''s state'
            cand help 'Print this message or the help of the given subcommand(s)'
        }
        &'opencti-stream-exporter;state;show'= {
            cand -c 'YAML configuration file [default: ./config.yml when present]'
            cand --config 'YAML configuration file [default: ./config.yml when present]'
            cand --state 'State file [default: `state.path`, else next to the config file]'
            cand --json 'Print JSON for scripts'
            cand -q 'Print only warnings and errors'
            cand --quiet 'Print only warnings and errors'
            cand -v 'Print more (-v: debug, -vv: trace)'
            cand --verbose 'Print more (-v: debug, -vv: trace)'
            cand -h 'Print help'
            cand --help 'Print help'
            cand -V 'Print version'
            cand --version 'Print version'
        }
        &'opencti-stream-exporter;state;reset'= {
            cand --start-from 'Resume after this position: an ISO date with a zone, epoch milliseconds, or `<ms>-<seq>`'
            cand --file-count 'Number of the last file the importer has read (the next file is N+1); never lower than what the export stored'
            cand -c 'YAML configuration file [default: ./config.yml when present]'
            cand --config 'YAML configuration file [default: ./config.yml when present]'
            cand --state 'State file [default: `state.path`, else next to the config file]'
            cand -y 'Do not ask for confirmation'
            cand --yes 'Do not ask for confirmation'
            cand --importer-was-reset 'The importer''s own file count was reset too: allow a `--file-count` lower than what the export stored'
            cand -q 'Print only warnings and errors'
            cand --quiet 'Print only warnings and errors'
            cand -v 'Print more (-v: debug, -vv: trace)'
            cand --verbose 'Print more (-v: debug, -vv: trace)'
            cand -h 'Print help (see more with ''--help'')'
            cand --help 'Print help (see more with ''--help'')'
            cand -V 'Print version'
            cand --version 'Print version'
        }
        &'opencti-stream-exporter;state;import'= {
            cand --connector-id 'Id of the reference connector on OpenCTI [default: `connector.id`]'
            cand -c 'YAML configuration file [default: ./config.yml when present]'
            cand --config 'YAML configuration file [default: ./config.yml when present]'
            cand --state 'State file [default: `state.path`, else next to the config file]'
            cand --from-opencti 'Read the state from OpenCTI, where the reference connector kept it'
            cand --replace 'Replace an existing state file (never with a lower file count)'
            cand -q 'Print only warnings and errors'
            cand --quiet 'Print only warnings and errors'
            cand -v 'Print more (-v: debug, -vv: trace)'
            cand --verbose 'Print more (-v: debug, -vv: trace)'
            cand -h 'Print help (see more with ''--help'')'
            cand --help 'Print help (see more with ''--help'')'
            cand -V 'Print version'
            cand --version 'Print version'
        }
        &'opencti-stream-exporter;state;help'= {
            cand show 'Print the saved state: cursor, next file number, pending upload, last run'
            cand reset 'Reset the stream position (the file numbering is kept), optionally to a given cursor'
            cand import 'Take over from the reference Python connector: read its state from OpenCTI and save it as this tool''s state'
            cand help 'Print this message or the help of the given subcommand(s)'
        }
        &'opencti-stream-exporter;state;help;show'= {
        }
        &'opencti-stream-exporter;state;help;reset'= {
        }
        &'opencti-stream-exporter;state;help;import'= {
        }
        &'opencti-stream-exporter;state;help;help'= {
        }
        &'opencti-stream-exporter;check-stream'= {
            cand -c 'YAML configuration file [default: ./config.yml when present]'
            cand --config 'YAML configuration file [default: ./config.yml when present]'
            cand --state 'State file [default: `state.path`, else next to the config file]'
            cand --json 'Print JSON for machines'
            cand --verify 'Also read back every exported file: metadata, SHA-256, lines, and the number sequence'
            cand -q 'Print only warnings and errors'
            cand --quiet 'Print only warnings and errors'
            cand -v 'Print more (-v: debug, -vv: trace)'
            cand --verbose 'Print more (-v: debug, -vv: trace)'
            cand -h 'Print help'
            cand --help 'Print help'
            cand -V 'Print version'
            cand --version 'Print version'
        }
        &'opencti-stream-exporter;help'= {
            cand run 'Export the live stream: follow it, write batch files, save the cursor'
            cand state 'Show or reset the saved state (cursor, file count)'
            cand check-stream 'Check the configuration, OpenCTI, the stream and the storage, item by item'
            cand help 'Print this message or the help of the given subcommand(s)'
        }
        &'opencti-stream-exporter;help;run'= {
        }
        &'opencti-stream-exporter;help;state'= {
            cand show 'Print the saved state: cursor, next file number, pending upload, last run'
            cand reset 'Reset the stream position (the file numbering is kept), optionally to a given cursor'
            cand import 'Take over from the reference Python connector: read its state from OpenCTI and save it as this tool''s state'
        }
        &'opencti-stream-exporter;help;state;show'= {
        }
        &'opencti-stream-exporter;help;state;reset'= {
        }
        &'opencti-stream-exporter;help;state;import'= {
        }
        &'opencti-stream-exporter;help;check-stream'= {
        }
        &'opencti-stream-exporter;help;help'= {
        }
    ]
    $completions[$command]
}
