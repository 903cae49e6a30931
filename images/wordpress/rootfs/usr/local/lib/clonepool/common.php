<?php
// clonepool helper library: reading key=value input from stdin and exiting with clear codes.
// Secrets arrive only on stdin; nothing here prints a value.

const CLONEPOOL_EXIT_FAILURE = 1;
const CLONEPOOL_EXIT_BAD_INPUT = 2;

/** Set once a helper has finished (or failed on purpose); see clonepool_guard_exit(). */
$GLOBALS['clonepool_finished'] = false;

function clonepool_fail(string $tool, string $message, int $code = CLONEPOOL_EXIT_FAILURE): void
{
    $GLOBALS['clonepool_finished'] = true;
    fwrite(STDERR, "$tool: $message\n");
    exit($code);
}

/** Marks a helper as done: from here on an exit is a success. */
function clonepool_done(): void
{
    $GLOBALS['clonepool_finished'] = true;
}

/**
 * WordPress stops with a bare die() (exit status 0) when it cannot reach the database or calls
 * wp_die(). Turn any stop before clonepool_done() into exit status 1.
 */
function clonepool_guard_exit(string $tool): void
{
    register_shutdown_function(static function () use ($tool) {
        if (!$GLOBALS['clonepool_finished']) {
            fwrite(STDERR, "\n$tool: WordPress stopped early (database unreachable or wp_die; see above)\n");
            exit(CLONEPOOL_EXIT_FAILURE);
        }
    });
}

/**
 * Reads `key=value` lines from stdin. Blank lines are skipped; a value runs to the end of its line
 * (it may contain '='). Unknown or repeated keys and missing required keys are errors (exit 2).
 *
 * @param string[] $required keys that must be present
 * @param string[] $optional keys that may be present
 * @return array<string,string>
 */
function clonepool_read_kv(string $tool, array $required, array $optional = []): array
{
    $allowed = array_merge($required, $optional);
    $values = [];
    $input = stream_get_contents(STDIN);
    if ($input === false) {
        clonepool_fail($tool, 'cannot read stdin', CLONEPOOL_EXIT_BAD_INPUT);
    }
    foreach (preg_split('/\r?\n/', $input) as $number => $line) {
        if ($line === '') {
            continue;
        }
        $eq = strpos($line, '=');
        if ($eq === false) {
            clonepool_fail($tool, 'line ' . ($number + 1) . ' is not key=value', CLONEPOOL_EXIT_BAD_INPUT);
        }
        $key = substr($line, 0, $eq);
        if (!in_array($key, $allowed, true)) {
            clonepool_fail($tool, "unknown key '$key' (expected: " . implode(', ', $allowed) . ')', CLONEPOOL_EXIT_BAD_INPUT);
        }
        if (array_key_exists($key, $values)) {
            clonepool_fail($tool, "key '$key' given twice", CLONEPOOL_EXIT_BAD_INPUT);
        }
        $values[$key] = substr($line, $eq + 1);
    }
    foreach ($required as $key) {
        if (!isset($values[$key]) || $values[$key] === '') {
            clonepool_fail($tool, "missing or empty '$key'", CLONEPOOL_EXIT_BAD_INPUT);
        }
    }
    return $values;
}

/** Checks that a site URL is an absolute http(s) URL without path, query or fragment. */
function clonepool_parse_site_url(string $tool, string $url): array
{
    $parts = parse_url($url);
    if ($parts === false || !isset($parts['scheme'], $parts['host'])
        || !in_array(strtolower($parts['scheme']), ['http', 'https'], true)
        || isset($parts['query']) || isset($parts['fragment']) || isset($parts['user'])
        || (isset($parts['path']) && $parts['path'] !== '/' && $parts['path'] !== '')) {
        clonepool_fail($tool, "site_url must look like http(s)://host[:port] (got '$url')", CLONEPOOL_EXIT_BAD_INPUT);
    }
    $parts['scheme'] = strtolower($parts['scheme']);
    $parts['normalized'] = $parts['scheme'] . '://' . $parts['host'] . (isset($parts['port']) ? ':' . $parts['port'] : '');
    $parts['http_host'] = $parts['host'] . (isset($parts['port']) ? ':' . $parts['port'] : '');
    return $parts;
}

/**
 * Sets up $_SERVER like a web request to $site so WordPress code that looks at the request
 * (URL guessing, is_ssl) sees the clone's own address.
 */
function clonepool_fake_request(array $site): void
{
    $_SERVER['HTTP_HOST'] = $site['http_host'];
    $_SERVER['SERVER_NAME'] = $site['host'];
    $_SERVER['SERVER_PORT'] = (string) ($site['port'] ?? ($site['scheme'] === 'https' ? 443 : 80));
    $_SERVER['REQUEST_URI'] = '/';
    $_SERVER['REQUEST_METHOD'] = 'GET';
    $_SERVER['SCRIPT_NAME'] = '/index.php';
    $_SERVER['PHP_SELF'] = '/index.php';
    if ($site['scheme'] === 'https') {
        $_SERVER['HTTPS'] = 'on';
    } else {
        unset($_SERVER['HTTPS']);
    }
}

/**
 * Blocks every outgoing HTTP request WordPress would make while a helper runs (the install tries
 * to fetch its own front page to test permalinks; a clone must not call out). Must run before
 * wp-load.php: WordPress builds its hooks from a pre-filled $wp_filter.
 */
function clonepool_block_http(): void
{
    $GLOBALS['wp_filter']['pre_http_request'][10][] = [
        'function' => static function () {
            return new WP_Error('clonepool_no_http', 'outgoing HTTP is disabled in clonepool helpers');
        },
        'accepted_args' => 0,
    ];
}
